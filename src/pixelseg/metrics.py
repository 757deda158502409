"""Segmentation metrics from one streaming confusion matrix.

As in the FCN paper (Long et al., 2015, Sec. 5) and MMSegmentation, the confusion matrix is accumulated
over the whole dataset and the scores are computed once from it — not averaged over images.
With ``n_ij`` the number of pixels of true class ``i`` predicted as ``j``, ``t_i = Σ_j n_ij`` and
``p_j = Σ_i n_ij``:

- pixel accuracy        ``PA   = Σ_i n_ii / Σ_i t_i``
- mean pixel accuracy   ``MPA  = mean_i n_ii / t_i``
- IoU of class i        ``IoU_i = n_ii / (t_i + p_i − n_ii)``, ``mIoU = mean_i IoU_i``
- frequency-weighted    ``fwIoU = Σ_i t_i · IoU_i / Σ_i t_i``
- Dice (F1) of class i  ``Dice_i = 2 n_ii / (t_i + p_i)``

Pixels whose target is ``ignore_index`` are excluded everywhere. A class absent from both prediction and
ground truth has an undefined score (0/0): by default it is NaN and left out of the means
(``absent="nan"``); ``absent="zero"`` counts it as 0 instead, as some libraries do.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


class ConfusionMatrix:
    """Streaming ``num_classes × num_classes`` confusion matrix (rows: truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 absent: Literal["nan", "zero"] = "nan") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.absent = absent
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: ``prediction`` holds labels (or logits with a class dim 1), ``target`` labels."""
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        prediction = prediction.reshape(-1)
        target = target.reshape(-1)
        valid = target != self.ignore_index if self.ignore_index is not None else None
        if valid is not None and not bool(valid.all()):
            prediction, target = prediction[valid], target[valid]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"target labels must lie in [0, {self.num_classes}) or be the ignore index")
        n = self.num_classes
        counts = torch.bincount(target.to(torch.int64) * n + prediction.to(torch.int64), minlength=n * n)
        self.matrix += counts.reshape(n, n).to(self.matrix.device)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    # ---- scores ---------------------------------------------------------------------------------------
    def _divide(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        numerator, denominator = numerator.double(), denominator.double()
        fill = float("nan") if self.absent == "nan" else 0.0
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        return torch.where(denominator > 0, numerator / safe, torch.full_like(numerator, fill))

    @property
    def true_per_class(self) -> Tensor:
        return self.matrix.sum(1)

    @property
    def predicted_per_class(self) -> Tensor:
        return self.matrix.sum(0)

    def iou_per_class(self) -> Tensor:
        tp = self.matrix.diag()
        return self._divide(tp, self.true_per_class + self.predicted_per_class - tp)

    def dice_per_class(self) -> Tensor:
        tp = self.matrix.diag()
        return self._divide(2 * tp, self.true_per_class + self.predicted_per_class)

    def accuracy_per_class(self) -> Tensor:
        """Per-class pixel accuracy, i.e. recall ``n_ii / t_i``."""
        return self._divide(self.matrix.diag(), self.true_per_class)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum().double() / total) if total > 0 else float("nan")

    def mean_pixel_accuracy(self) -> float:
        return _nanmean(self.accuracy_per_class())

    def mean_iou(self) -> float:
        return _nanmean(self.iou_per_class())

    def mean_dice(self) -> float:
        return _nanmean(self.dice_per_class())

    def frequency_weighted_iou(self) -> float:
        frequency = self.true_per_class.double()
        total = frequency.sum()
        if total == 0:
            return float("nan")
        iou = torch.nan_to_num(self.iou_per_class(), nan=0.0)  # absent classes have zero weight anyway
        return float((frequency * iou).sum() / total)

    def compute(self) -> dict[str, float | list[float]]:
        """All scores as plain Python numbers (per-class lists included)."""
        return {
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_pixel_accuracy": self.mean_pixel_accuracy(),
            "mean_iou": self.mean_iou(),
            "frequency_weighted_iou": self.frequency_weighted_iou(),
            "mean_dice": self.mean_dice(),
            "iou_per_class": self.iou_per_class().tolist(),
            "dice_per_class": self.dice_per_class().tolist(),
            "accuracy_per_class": self.accuracy_per_class().tolist(),
        }


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")
