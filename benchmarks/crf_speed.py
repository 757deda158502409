"""Dense CRF speed: pixelseg's PyTorch permutohedral mean field vs pydensecrf2, in the same run.

A 360x480 CamVid test image, 11 classes, 5 mean-field iterations, the default kernels (smoothness
3 px / weight 3, appearance 80 px, 13 levels / weight 10). Unaries come from the small per-pixel
network of ``tests/test_refiners_dense_crf.py`` (colour + position -> 11 classes, trained on CamVid
pixels). Both sides are timed from the unaries and the image to the marginals (lattice building
included). "cold" rebuilds our smoothness-kernel lattice too; "warm" reuses it, as happens for every
image after the first of a given size. Label agreement is printed alongside.

The machine is shared, so besides wall-clock seconds the process CPU seconds of each call are
measured (``time.process_time``): with one torch thread and the single-threaded pydensecrf2 they are
the work done, whatever the load; the ratios are given for both.

    .venv/bin/python benchmarks/crf_speed.py [--images 3] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixelseg.refiners.dense_crf import DenseCRFConfig, dense_crf, spatial_kernel  # noqa: E402
from tests.test_refiners_dense_crf import camvid_unary, pydensecrf_marginals, train_pixel_network  # noqa: E402


def seconds(function: Callable[[], object]) -> tuple[np.ndarray, object]:
    """([wall-clock seconds, process CPU seconds], result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu]), result


def compare(image: np.ndarray, unary: torch.Tensor, config: DenseCRFConfig, repeats: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Median [wall, CPU] seconds of pydensecrf2, ours cold and ours warm, timed in turn (the machine
    is shared, so interleaving keeps the three under the same load), and the share of identical labels."""
    reference_times, cold_times, warm_times = [], [], []
    agreement = 0.0
    for _ in range(repeats):
        elapsed, reference = seconds(lambda: pydensecrf_marginals(unary, image, config))
        reference_times.append(elapsed)
        spatial_kernel.cache_clear()
        elapsed, ours = seconds(lambda: dense_crf(unary, image, config))
        cold_times.append(elapsed)
        warm_times.append(seconds(lambda: dense_crf(unary, image, config))[0])
        agreement = float((ours.argmax(0).numpy() == np.asarray(reference).argmax(0)).mean())
    return (np.median(reference_times, axis=0), np.median(cold_times, axis=0),
            np.median(warm_times, axis=0), agreement)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--camvid", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    config = DenseCRFConfig()
    network = train_pixel_network(args.camvid)
    print(f"torch {torch.__version__}, cpu, 360x480, 11 classes, {config.iterations} iterations, "
          f"median of {args.repeats} runs per image; load average at start {os.getloadavg()[0]:.2f}")
    rows = []
    for index in range(0, args.images * 40, 40):
        image, unary = camvid_unary(args.camvid, network, index)
        for threads in args.threads:
            torch.set_num_threads(threads)
            reference, cold, warm, agreement = compare(image, unary, config, args.repeats)
            rows.append((threads, reference, cold, warm, agreement))
            for kind, column in (("wall", 0), ("CPU", 1)):
                print(f"test image {index:3d}  torch threads {threads}  {kind:4s}  pydensecrf2 "
                      f"{reference[column]:.3f} s  pixelseg cold {cold[column]:.3f} s "
                      f"(ratio {cold[column] / reference[column]:.2f})  warm {warm[column]:.3f} s "
                      f"(ratio {warm[column] / reference[column]:.2f})  identical labels {agreement:.4%}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    for threads in args.threads:
        mine = [row for row in rows if row[0] == threads]
        for kind, column in (("wall-clock", 0), ("CPU", 1)):
            ratios_cold = statistics.median(row[2][column] / row[1][column] for row in mine)
            ratios_warm = statistics.median(row[3][column] / row[1][column] for row in mine)
            print(f"{threads} torch thread(s), median over {len(mine)} images, {kind} time ratio "
                  f"pixelseg / pydensecrf2: cold {ratios_cold:.2f}, warm {ratios_warm:.2f}; "
                  f"lowest agreement {min(r[4] for r in mine):.4%}")


if __name__ == "__main__":
    main()
