"""Confusion-matrix update speed: pixelseg's ``ConfusionMatrix`` vs torchmetrics' ``MulticlassJaccardIndex``.

One update with a batch of 8 label maps of 512x512 over 21 classes (PASCAL VOC's count), 5% of the
target pixels set to the ignore index 255; both metrics ignore them. Each is timed over ``--repeats``
updates after one warm-up, in the same process and on the same tensors, and the median is reported
with the ratio; a bare ``torch.bincount`` of the same pixels is the floor. The mIoU of both must agree.
Timed twice: with both libraries' input checks on (their defaults), and with both off
(``validate=False`` / ``validate_args=False``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/metrics_speed.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import median_seconds
from torchmetrics.classification import MulticlassJaccardIndex

from pixelseg.metrics import ConfusionMatrix


def median_ms(update: Callable[[], object], repeats: int) -> float:
    return 1000 * median_seconds(update, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    classes, ignore = 21, 255
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, classes, (8, 512, 512), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.05] = ignore
    prediction = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target.clamp(max=classes - 1),
                             torch.randint(0, classes, target.shape, generator=generator))

    valid = target != ignore
    floor_index = target[valid] * classes + prediction[valid]
    print(f"8x512x512, {classes} classes, {args.threads} thread(s), median of {args.repeats} updates")
    for checks in (True, False):
        ours = ConfusionMatrix(classes, ignore_index=ignore, validate=checks)
        theirs = MulticlassJaccardIndex(num_classes=classes, ignore_index=ignore, validate_args=checks)
        ours_ms = median_ms(lambda: ours.update(prediction, target), args.repeats)  # noqa: B023
        theirs_ms = median_ms(lambda: theirs.update(prediction, target), args.repeats)  # noqa: B023
        ours_miou, theirs_miou = ours.mean_iou(), float(theirs.compute())
        if abs(ours_miou - theirs_miou) > 1e-6:
            raise SystemExit(f"mIoU differs: ours {ours_miou} vs torchmetrics {theirs_miou}")
        print(f"input checks {'on ' if checks else 'off'}: pixelseg ConfusionMatrix.update {ours_ms:8.2f} ms, "
              f"torchmetrics MulticlassJaccardIndex {theirs_ms:8.2f} ms, ratio {theirs_ms / ours_ms:.1f}x "
              f"(mIoU {ours_miou:.6f} = {theirs_miou:.6f})")
    floor_ms = median_ms(lambda: torch.bincount(floor_index, minlength=classes * classes), args.repeats)
    print(f"bare torch.bincount of the pre-masked pixels: {floor_ms:.2f} ms")


if __name__ == "__main__":
    main()
