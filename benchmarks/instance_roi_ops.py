"""RoIAlign / RoIPool speed: pixelseg's vectorised PyTorch against torchvision's C++ kernels, same run.

Mask R-CNN-like workloads on one FPN level: a (2, 256, 50, 68) map (stride 16 of an 800x1088 image),
512 random boxes, RoIAlign 7x7 with sampling_ratio 2 (box head), RoIAlign 14x14 (mask head, 128
boxes), RoIPool 7x7; forward (no gradient: inference) and forward+backward (training). The two
implementations take turns (ours, torchvision, ours, ...) for ``--repeats`` rounds after a warm-up, the
clock is this process's CPU time (``time.process_time``); prints the medians and the ratio ours /
torchvision (above 1: we are slower), plus the largest difference of the outputs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instance_roi_ops.py [--repeats 5] [--threads 1] [--only RoIPool]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision.ops as tv_ops

from pixelseg.models.modules.roi_ops import roi_align, roi_pool


def interleaved_medians(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median CPU seconds of each call, the two taking turns for ``repeats`` rounds after one warm-up each."""
    ours(), theirs()
    seconds: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for times, run in zip(seconds, (ours, theirs), strict=True):
            start = time.process_time()
            run()
            times.append(time.process_time() - start)
    return statistics.median(seconds[0]), statistics.median(seconds[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 256, 50, 68, generator=gen)

    def boxes(count: int) -> torch.Tensor:
        corner = torch.rand(count, 2, generator=gen) * torch.tensor([1088.0, 800.0])
        size = torch.rand(count, 2, generator=gen) * 300 + 8
        index = torch.randint(0, 2, (count, 1), generator=gen).float()
        return torch.cat([index, corner, corner + size], dim=1)

    cases = [
        ("RoIAlign 7x7, 512 boxes", roi_align, tv_ops.roi_align, boxes(512), dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2)),
        ("RoIAlign 14x14, 128 boxes", roi_align, tv_ops.roi_align, boxes(128), dict(output_size=14, spatial_scale=1 / 16, sampling_ratio=2)),
        ("RoIAlign 7x7 adaptive, 128 boxes", roi_align, tv_ops.roi_align, boxes(128), dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=-1, aligned=True)),
        ("RoIPool 7x7, 512 boxes", roi_pool, tv_ops.roi_pool, boxes(512), dict(output_size=7, spatial_scale=1 / 16)),
    ]
    print(f"threads={args.threads} repeats={args.repeats} map={tuple(features.shape)} "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':36s} {'pass':16s} {'ours ms':>9s} {'tv ms':>9s} {'ratio':>6s} {'max |diff|':>11s}")
    for name, ours, reference, rois, kwargs in [case for case in cases if args.only in case[0]]:
        diff = (ours(features, rois, **kwargs) - reference(features, rois, **kwargs)).abs().max().item()
        leaf = features.clone().requires_grad_(True)
        for label, run_ours, run_ref in (
            ("forward", lambda o=ours, r=rois, k=kwargs: o(features, r, **k),
             lambda f=reference, r=rois, k=kwargs: f(features, r, **k)),
            ("forward+backward", lambda o=ours, r=rois, k=kwargs, x=leaf: o(x, r, **k).sum().backward(),
             lambda f=reference, r=rois, k=kwargs, x=leaf: f(x, r, **k).sum().backward()),
        ):
            ours_s, ref_s = interleaved_medians(run_ours, run_ref, args.repeats)
            print(f"{name:36s} {label:16s} {ours_s * 1e3:9.1f} {ref_s * 1e3:9.1f} {ours_s / ref_s:6.2f} {diff:11.2e}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
