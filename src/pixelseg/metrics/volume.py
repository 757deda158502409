"""Volumetric scores (as reported for V-Net: Milletari, Navab & Ahmadi, 3DV 2016, arXiv:1606.04797).

Scores: per-class Dice ``2|P∩G| / (|P| + |G|)`` and IoU ``|P∩G| / |P∪G|`` counted over voxels. Medical
segmentation reports them per volume and averages over volumes (``VolumeScores.compute()["mean_dice"]``);
the dataset-wide figures from one confusion matrix over all voxels (as ``pixelseg.metrics`` does in 2D)
come with them. A class absent from both prediction and ground truth of a volume has no score there (NaN,
left out of the means). Everything works for any number of spatial dimensions.


V-Net's own Dice loss is ``pixelseg.losses.vnet_dice_loss``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .confusion import ConfusionMatrix


def dice_iou_per_class(prediction: Tensor, target: Tensor, num_classes: int,
                       ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Dice and IoU of each class for ONE volume (labels of equal shape); NaN where a class is absent
    from both."""
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, absent="nan")
    matrix.update(prediction, target)
    return matrix.dice_per_class(), matrix.iou_per_class()


class VolumeScores:
    """Streaming volumetric scores: per-volume Dice/IoU (averaged over volumes) and dataset-wide ones.

    ``update(prediction, target)`` takes a batch of volumes: labels ``(B, D, H, W)`` or logits
    ``(B, C, D, H, W)``; every sample in the batch is one volume.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.dataset = ConfusionMatrix(num_classes, ignore_index=ignore_index, absent="nan")
        self.dice: list[Tensor] = []
        self.iou: list[Tensor] = []

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        for volume_prediction, volume_target in zip(prediction, target, strict=True):
            dice, iou = dice_iou_per_class(volume_prediction, volume_target, self.num_classes, self.ignore_index)
            self.dice.append(dice)
            self.iou.append(iou)
        self.dataset.update(prediction, target)

    def compute(self) -> dict[str, float | list[float]]:
        """Per-class and mean scores; ``mean_dice`` = mean over classes of the mean over volumes."""
        if not self.dice:
            raise ValueError("no volumes were added")
        dice_per_class = _nanmean_rows(torch.stack(self.dice))
        iou_per_class = _nanmean_rows(torch.stack(self.iou))
        return {
            "volumes": len(self.dice),
            "dice_per_class": dice_per_class.tolist(),
            "iou_per_class": iou_per_class.tolist(),
            "mean_dice": _nanmean(dice_per_class),
            "mean_iou": _nanmean(iou_per_class),
            "dataset_dice_per_class": self.dataset.dice_per_class().tolist(),
            "dataset_iou_per_class": self.dataset.iou_per_class().tolist(),
            "dataset_mean_dice": self.dataset.mean_dice(),
            "dataset_mean_iou": self.dataset.mean_iou(),
            "voxel_accuracy": self.dataset.pixel_accuracy(),
        }


def _nanmean_rows(values: Tensor) -> Tensor:
    """Column means of a (volumes, classes) table, ignoring NaN; NaN for a column with no number."""
    finite = ~torch.isnan(values)
    counts = finite.sum(0)
    sums = torch.where(finite, values, torch.zeros_like(values)).sum(0)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan
