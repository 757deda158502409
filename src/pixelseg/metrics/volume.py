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
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Scores, all_reduce_sum, markdown_table, nanmean
from .confusion import ConfusionMatrix


def dice_iou_per_class(prediction: Tensor, target: Tensor, num_classes: int,
                       ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Dice and IoU of each class for ONE volume (labels of equal shape); NaN where a class is absent
    from both."""
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, absent="nan")
    matrix.update(prediction, target)
    return matrix.dice_per_class(), matrix.iou_per_class()


class VolumeScores:
    """Streaming volumetric scores: per-volume Dice/IoU (averaged over volumes) and dataset-wide ones; an
    :class:`~pixelseg.metrics.base.Evaluator`.

    ``update(prediction, target)`` takes a batch of volumes: labels ``(B, D, H, W)`` or logits
    ``(B, C, D, H, W)``; every sample in the batch is one volume. The state is sums of counts (per class:
    the sum of per-volume Dice and IoU and the number of volumes where each is defined; the confusion matrix
    over all voxels), so ``all_reduce`` merges processes exactly.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.dataset = ConfusionMatrix(num_classes, ignore_index=ignore_index, absent="nan")
        # rows: sum of Dice, volumes with a Dice, sum of IoU, volumes with an IoU; last column: volumes
        self.sums = torch.zeros(4, num_classes + 1, dtype=torch.float64)

    def reset(self) -> None:
        self.dataset.reset()
        self.sums.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        for volume_prediction, volume_target in zip(prediction, target, strict=True):
            dice, iou = dice_iou_per_class(volume_prediction, volume_target, self.num_classes, self.ignore_index)
            for row, scores in ((0, dice), (2, iou)):
                defined = ~torch.isnan(scores)
                self.sums[row, :-1] += torch.where(defined, scores, torch.zeros_like(scores))
                self.sums[row + 1, :-1] += defined
            self.sums[0, -1] += 1
        self.dataset.update(prediction, target)

    def all_reduce(self, group: object | None = None) -> None:
        """Sum the per-volume sums and the voxel confusion matrix of all processes in place."""
        all_reduce_sum(self.sums, group)
        self.dataset.all_reduce(group)

    @property
    def volumes(self) -> int:
        return int(self.sums[0, -1])

    def dice_per_class(self) -> Tensor:
        """Mean over volumes of each class's Dice (NaN for a class never scored)."""
        return _mean_of_sums(self.sums[0, :-1], self.sums[1, :-1])

    def iou_per_class(self) -> Tensor:
        return _mean_of_sums(self.sums[2, :-1], self.sums[3, :-1])

    def compute(self) -> Scores:
        """Per-class and mean scores; ``mean_dice`` = mean over classes of the mean over volumes."""
        if not self.volumes:
            raise ValueError("no volumes were added")
        dice_per_class, iou_per_class = self.dice_per_class(), self.iou_per_class()
        return {
            "volumes": self.volumes,
            "dice_per_class": dice_per_class.tolist(),
            "iou_per_class": iou_per_class.tolist(),
            "mean_dice": nanmean(dice_per_class),
            "mean_iou": nanmean(iou_per_class),
            "dataset_dice_per_class": self.dataset.dice_per_class().tolist(),
            "dataset_iou_per_class": self.dataset.iou_per_class().tolist(),
            "dataset_mean_dice": self.dataset.mean_dice(),
            "dataset_mean_iou": self.dataset.mean_iou(),
            "voxel_accuracy": self.dataset.pixel_accuracy(),
        }

    def report(self, class_names: Sequence[str]) -> str:
        """Per-volume (mean over volumes) and dataset-wide Dice and IoU per class, and their means."""
        dice, iou = self.dice_per_class(), self.iou_per_class()
        table = markdown_table(
            class_names,
            {"Dice": dice.tolist(), "IoU": iou.tolist(), "dataset Dice": self.dataset.dice_per_class().tolist(),
             "dataset IoU": self.dataset.iou_per_class().tolist()},
            {"Dice": nanmean(dice), "IoU": nanmean(iou), "dataset Dice": self.dataset.mean_dice(),
             "dataset IoU": self.dataset.mean_iou()})
        return f"{table}\n\n{self.volumes} volumes, voxel accuracy {self.dataset.pixel_accuracy():.4f}"


def _mean_of_sums(sums: Tensor, counts: Tensor) -> Tensor:
    """``sums / counts``, NaN where nothing was counted."""
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))

