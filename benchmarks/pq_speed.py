"""Panoptic quality speed: pixelseg's ``PanopticQuality`` vs torchmetrics' ``PanopticQuality``.

One image of 1024x1024 with 100 ground-truth segments (a Voronoi partition of 100 random seeds: 80 things
of 8 categories, 20 stuff segments of 20 categories, 1% of the pixels void); the prediction is the
ground truth shifted by (9, 5) pixels (wrapping, so without void) with 10 pairs of things merged. Each
metric is fed the same segmentation in its own input format (prepared beforehand, not timed): segment ids
+ ``segments_info`` for ours, ``(B, H, W, 2)`` category and instance for torchmetrics. The median of
``--repeats`` updates (after one warm-up) is reported with the ratio; the PQ, SQ, RQ of both must agree
to 1e-6.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pq_speed.py
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

from pixelseg.data.coco_panoptic import PanopticAnnotation
from pixelseg.metrics import PanopticQuality

THINGS, STUFF = list(range(1, 9)), list(range(101, 121))


def voronoi(size: int, segments: int, generator: torch.Generator) -> torch.Tensor:
    """``(size, size)`` ids 1..segments: each pixel takes its nearest of ``segments`` random seeds."""
    seeds = torch.rand(segments, 2, generator=generator) * size
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    pixels = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1)
    nearest = torch.cat([torch.cdist(chunk, seeds).argmin(1) for chunk in pixels.split(1 << 16)])
    return (nearest + 1).reshape(size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    truth_ids = voronoi(args.size, args.segments, generator)
    things = args.segments * 4 // 5
    category = {s: THINGS[s % len(THINGS)] if s <= things else STUFF[(s - things - 1) % len(STUFF)]
                for s in range(1, args.segments + 1)}
    prediction_ids = torch.roll(truth_ids, (9, 5), (0, 1))
    for first in range(1, 21, 2):  # ten pairs of things of one category merged
        prediction_ids[prediction_ids == first + len(THINGS)] = first
    truth_ids[torch.rand(truth_ids.shape, generator=generator) < 0.01] = 0

    def ours_input(ids: torch.Tensor, name: str) -> PanopticAnnotation:
        present = torch.unique(ids).tolist()
        return PanopticAnnotation(ids, [{"id": s, "category_id": category[s]} for s in present if s], name)

    def theirs_input(ids: torch.Tensor) -> torch.Tensor:
        lookup = torch.tensor([0] + [category[s] for s in range(1, args.segments + 1)])
        return torch.stack([lookup[ids], ids], -1)[None]

    truth, prediction = ours_input(truth_ids, "truth"), ours_input(prediction_ids, "prediction")
    truth_tm, prediction_tm = theirs_input(truth_ids), theirs_input(prediction_ids)

    ours = PanopticQuality(THINGS, STUFF)
    theirs = TorchmetricsPQ(things=set(THINGS), stuffs=set(STUFF), return_sq_and_rq=True)
    ours_s = median_seconds(lambda: ours.update(prediction, truth), args.repeats)
    theirs_s = median_seconds(lambda: theirs.update(prediction_tm, truth_tm), args.repeats)

    ours.reset()
    ours.update(prediction, truth)
    scores = ours.compute()
    theirs.reset()
    theirs.update(prediction_tm, truth_tm)
    reference = theirs.compute().tolist()
    print(f"{args.size}x{args.size}, {args.segments} segments, {args.threads} thread(s), "
          f"median of {args.repeats} updates")
    print(f"pixelseg PanopticQuality     {1000 * ours_s:9.1f} ms")
    print(f"torchmetrics PanopticQuality {1000 * theirs_s:9.1f} ms")
    print(f"ratio pixelseg / torchmetrics {ours_s / theirs_s:.3f} (< 1: pixelseg faster)")
    for name, value in zip(("PQ", "SQ", "RQ"), reference, strict=True):
        print(f"{name}: pixelseg {scores[name]:.6f}, torchmetrics {value:.6f}")
        if abs(scores[name] - value) > 1e-6:
            raise SystemExit(f"{name} differs: {scores[name]} vs {value}")


if __name__ == "__main__":
    main()
