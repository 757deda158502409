"""Reference row for the context-model CamVid table: every pixel labelled with the most frequent class
of the training split, scored on the validation split with pixelseg's ConfusionMatrix.

    python benchmarks/context/constant_baseline.py /tmp/pixelseg_camvid_quarter
"""

from __future__ import annotations

import sys

import torch

from pixelseg.data import CamVid
from pixelseg.metrics import ConfusionMatrix


def main() -> None:
    root = sys.argv[1]
    counts = torch.zeros(11, dtype=torch.long)
    for _, target in CamVid(root, "train"):
        valid = target[target != 255]
        counts += torch.bincount(torch.as_tensor(valid).flatten(), minlength=11)
    majority = int(counts.argmax())
    matrix = ConfusionMatrix(11, 255)
    for _, target in CamVid(root, "val"):
        target = torch.as_tensor(target)
        matrix.update(torch.full_like(target, majority)[None], target[None])
    scores = matrix.compute()
    print(f"majority class {CamVid(root, 'val').classes[majority]}: " + ", ".join(
        f"{key} {scores[key]:.4f}" for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou",
                                              "frequency_weighted_iou")))


if __name__ == "__main__":
    main()
