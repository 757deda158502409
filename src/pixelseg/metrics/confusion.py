"""Segmentation metrics from one streaming confusion matrix, and the boundary F-score.

As in the FCN paper (Long et al., 2015, Sec. 5) and MMSegmentation, the confusion matrix is accumulated
over the whole dataset and the scores are computed once from it — not averaged over images.
With ``n_ij`` the number of pixels of true class ``i`` predicted as ``j``, ``t_i = Σ_j n_ij`` and
``p_j = Σ_i n_ij``:

- pixel accuracy        ``PA   = Σ_i n_ii / Σ_i t_i``
- mean pixel accuracy   ``MPA  = mean_i n_ii / t_i``  (the per-class accuracy is the recall)
- precision of class i  ``n_ii / p_i``; recall ``n_ii / t_i``
- IoU of class i        ``IoU_i = n_ii / (t_i + p_i − n_ii)``, ``mIoU = mean_i IoU_i``
- frequency-weighted    ``fwIoU = Σ_i t_i · IoU_i / Σ_i t_i``
- Dice (F1) of class i  ``Dice_i = 2 n_ii / (t_i + p_i)``

Pixels whose target is ``ignore_index`` are excluded everywhere. A score whose denominator is 0 is
undefined (a class absent from the ground truth has no recall, one never predicted no precision, one
absent from both no IoU): by default it is NaN and left out of the means (``absent="nan"``);
``absent="zero"`` counts it as 0 instead, as some libraries do. docs/metrics.md has the details.

Both metrics are sums of counts, so evaluation split over processes is exact: ``all_reduce()`` sums
the counts of every process (``torch.distributed``) and each then holds the single-process result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from .base import Scores, all_reduce_sum, markdown_table, nanmean

AbsentRule = Literal["nan", "zero"]


def _check_absent(absent: str) -> None:
    if absent not in ("nan", "zero"):
        raise ValueError(f"absent must be 'nan' or 'zero', not {absent!r}")


def _divide(numerator: Tensor, denominator: Tensor, absent: AbsentRule) -> Tensor:
    numerator, denominator = numerator.double(), denominator.double()
    fill = float("nan") if absent == "nan" else 0.0
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.full_like(numerator, fill))


class ConfusionMatrix:
    """Streaming ``num_classes × num_classes`` confusion matrix (rows: truth, columns: prediction); an
    :class:`~pixelseg.metrics.base.Evaluator`.

    ``validate=False`` skips the range check of label predictions (labels from ``argmax`` are always
    in range); targets are always checked.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 absent: AbsentRule = "nan", validate: bool = True) -> None:
        _check_absent(absent)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.absent = absent
        self.validate = validate
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: ``prediction`` holds labels (or logits with a class dim 1), ``target`` labels."""
        check_prediction = self.validate
        if prediction.dim() == target.dim() + 1:
            prediction, check_prediction = prediction.argmax(1), False
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        if prediction.is_floating_point() or target.is_floating_point():
            raise ValueError("prediction and target must hold integer labels")
        n = self.num_classes
        prediction, target = prediction.reshape(-1), target.reshape(-1)
        if target.numel() == 0:
            return
        if check_prediction:
            low, high = torch.aminmax(prediction)
            if int(low) < 0 or int(high) >= n:
                raise ValueError(f"predicted labels must lie in [0, {n})")
        # One bincount over (row, column) pairs. Rows are target labels shifted so that a negative
        # ignore index lands on row 0; the ignore row is dropped afterwards, any other row outside
        # the classes is an error. int32 indices halve the memory traffic.
        offset = min(0, self.ignore_index) if self.ignore_index is not None else 0
        rows_needed = max(n, (self.ignore_index or 0) + 1) - offset
        dtype = torch.int32 if rows_needed * n < 2**31 - 1 else torch.int64
        index = target.to(dtype, copy=True)  # same-dtype in-place arithmetic is the fast path
        if offset:
            index -= offset
        index *= n
        index += prediction.to(dtype)
        bad_target = ValueError(f"target labels must lie in [0, {n}) or be the ignore index")
        try:
            counts = torch.bincount(index, minlength=rows_needed * n)
        except RuntimeError:  # a negative index: a target label below 0 that is not the ignore index
            raise bad_target from None
        if counts.numel() > rows_needed * n:
            raise bad_target
        counts = counts.reshape(-1, n)
        if self.ignore_index is not None:
            counts[self.ignore_index - offset].zero_()
        matrix = counts[-offset:n - offset]
        if int(counts.sum()) != int(matrix.sum()):
            raise bad_target
        self.matrix += matrix.to(self.matrix.device, torch.int64)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def all_reduce(self, group: object | None = None) -> None:
        """Sum the matrices of all processes in place (no-op outside ``torch.distributed``)."""
        all_reduce_sum(self.matrix, group)

    # ---- scores ---------------------------------------------------------------------------------------
    def _divide(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        return _divide(numerator, denominator, self.absent)

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

    def precision_per_class(self) -> Tensor:
        """``n_ii / p_i``: of the pixels predicted as class i, the fraction that are class i."""
        return self._divide(self.matrix.diag(), self.predicted_per_class)

    def recall_per_class(self) -> Tensor:
        """``n_ii / t_i``: of the pixels of class i, the fraction predicted as class i."""
        return self._divide(self.matrix.diag(), self.true_per_class)

    def accuracy_per_class(self) -> Tensor:
        """Per-class pixel accuracy, i.e. recall ``n_ii / t_i``."""
        return self.recall_per_class()

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum().double() / total) if total > 0 else float("nan")

    def mean_pixel_accuracy(self) -> float:
        return nanmean(self.accuracy_per_class())

    def mean_precision(self) -> float:
        return nanmean(self.precision_per_class())

    def mean_recall(self) -> float:
        return nanmean(self.recall_per_class())

    def mean_iou(self) -> float:
        return nanmean(self.iou_per_class())

    def mean_dice(self) -> float:
        return nanmean(self.dice_per_class())

    def frequency_weighted_iou(self) -> float:
        frequency = self.true_per_class.double()
        total = frequency.sum()
        if total == 0:
            return float("nan")
        iou = torch.nan_to_num(self.iou_per_class(), nan=0.0)  # absent classes have zero weight anyway
        return float((frequency * iou).sum() / total)

    def compute(self) -> Scores:
        """All scores as plain Python numbers (per-class lists included)."""
        return {
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_pixel_accuracy": self.mean_pixel_accuracy(),
            "mean_iou": self.mean_iou(),
            "frequency_weighted_iou": self.frequency_weighted_iou(),
            "mean_dice": self.mean_dice(),
            "mean_precision": self.mean_precision(),
            "mean_recall": self.mean_recall(),
            "iou_per_class": self.iou_per_class().tolist(),
            "dice_per_class": self.dice_per_class().tolist(),
            "accuracy_per_class": self.accuracy_per_class().tolist(),
            "precision_per_class": self.precision_per_class().tolist(),
            "recall_per_class": self.recall_per_class().tolist(),
        }

    def report(self, class_names: Sequence[str]) -> str:
        """IoU, Dice, accuracy (recall) and precision per class and their means, then pixel accuracy."""
        table = markdown_table(
            class_names,
            {"IoU": self.iou_per_class().tolist(), "Dice": self.dice_per_class().tolist(),
             "accuracy": self.accuracy_per_class().tolist(), "precision": self.precision_per_class().tolist()},
            {"IoU": self.mean_iou(), "Dice": self.mean_dice(), "accuracy": self.mean_pixel_accuracy(),
             "precision": self.mean_precision()})
        return (f"{table}\n\npixel accuracy {self.pixel_accuracy():.4f}, "
                f"frequency-weighted IoU {self.frequency_weighted_iou():.4f}")


def boundary_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels whose label differs from one of their 4 neighbours inside the image: each region's inner
    boundary (``skimage.segmentation.find_boundaries(mode="inner")``), for every label at once."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


class BoundaryFScore:
    """Boundary F-score (Csurka et al., BMVC 2013; the DAVIS F measure of Perazzi et al., CVPR 2016) per
    class, with a tolerance of ``tolerance`` pixels (Euclidean).

    For each image and class, the boundary pixels of the prediction and of the ground truth
    (``boundary_pixels``) are matched: a predicted boundary pixel is correct if a ground-truth boundary
    pixel of the class lies within the tolerance, and a ground-truth one is found if a predicted one
    does. The counts are summed over the dataset (like the confusion matrix), then per class
    ``P = matched predicted / predicted``, ``R = matched truth / truth`` and ``F = 2PR / (P + R)``.
    Boundary pixels on ignored pixels are dropped from both. A class with no boundary pixel in
    prediction or ground truth has no score (``absent`` rule); if only one side has some, ``F = 0``.
    """

    def __init__(self, num_classes: int, tolerance: float = 2.0, ignore_index: int | None = 255,
                 absent: AbsentRule = "nan") -> None:
        _check_absent(absent)
        self.num_classes, self.tolerance = num_classes, tolerance
        self.ignore_index, self.absent = ignore_index, absent
        # rows: matched predicted, predicted, matched truth, truth boundary pixels; one column per class
        self.counts = torch.zeros(4, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch of label maps ``(B, H, W)`` (or ``(H, W)``; logits ``(B, C, H, W)`` are argmaxed)."""
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        predictions = prediction.reshape(-1, *prediction.shape[-2:]).cpu().numpy()
        targets = target.reshape(-1, *target.shape[-2:]).cpu().numpy()
        for predicted, truth in zip(predictions, targets, strict=True):
            self.counts += self._count(predicted, truth)

    def _count(self, predicted: np.ndarray, truth: np.ndarray) -> Tensor:
        counted = truth != self.ignore_index if self.ignore_index is not None else np.ones(truth.shape, bool)
        predicted_edges = boundary_pixels(predicted) & counted
        true_edges = boundary_pixels(truth) & counted
        counts = torch.zeros(4, self.num_classes, dtype=torch.int64)
        for c in range(self.num_classes):
            predicted_c = predicted_edges & (predicted == c)
            true_c = true_edges & (truth == c)
            n_predicted, n_true = int(predicted_c.sum()), int(true_c.sum())
            matched_predicted = matched_true = 0
            if n_predicted and n_true:
                matched_predicted = int((distance_transform_edt(~true_c)[predicted_c] <= self.tolerance).sum())
                matched_true = int((distance_transform_edt(~predicted_c)[true_c] <= self.tolerance).sum())
            counts[:, c] = torch.tensor([matched_predicted, n_predicted, matched_true, n_true])
        return counts

    def all_reduce(self, group: object | None = None) -> None:
        """Sum the counts of all processes in place (no-op outside ``torch.distributed``)."""
        all_reduce_sum(self.counts, group)

    def precision_per_class(self) -> Tensor:
        return _divide(self.counts[0], self.counts[1], self.absent)

    def recall_per_class(self) -> Tensor:
        return _divide(self.counts[2], self.counts[3], self.absent)

    def f_score_per_class(self) -> Tensor:
        precision = _divide(self.counts[0], self.counts[1], "zero")
        recall = _divide(self.counts[2], self.counts[3], "zero")
        score = _divide(2 * precision * recall, precision + recall, "zero")
        absent = (self.counts[1] == 0) & (self.counts[3] == 0)
        return torch.where(absent, torch.full_like(score, float("nan") if self.absent == "nan" else 0.0), score)

    def mean_f_score(self) -> float:
        return nanmean(self.f_score_per_class())

    def compute(self) -> Scores:
        return {
            "mean_boundary_f": self.mean_f_score(),
            "boundary_f_per_class": self.f_score_per_class().tolist(),
            "boundary_precision_per_class": self.precision_per_class().tolist(),
            "boundary_recall_per_class": self.recall_per_class().tolist(),
        }

    def report(self, class_names: Sequence[str]) -> str:
        """Boundary F-score, precision and recall per class, and their means."""
        return markdown_table(
            class_names,
            {"boundary F": self.f_score_per_class().tolist(), "precision": self.precision_per_class().tolist(),
             "recall": self.recall_per_class().tolist()},
            {"boundary F": self.mean_f_score(), "precision": nanmean(self.precision_per_class()),
             "recall": nanmean(self.recall_per_class())})

