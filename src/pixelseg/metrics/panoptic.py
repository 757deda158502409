"""Panoptic quality, PQ = SQ × RQ (Kirillov, He, Girshick, Rother, Dollár, "Panoptic Segmentation", CVPR
2019, arXiv:1801.00868).

A panoptic segmentation is a map of segment ids (0 = void, unlabelled) and its COCO ``segments_info``
(``id``, ``category_id``, ``iscrowd``). Per image, a predicted segment ``p`` and a ground-truth segment ``g``
of the same category match when ``IoU(p, g) > 0.5``, which makes matches unique. Per class::

    SQ = Σ_TP IoU / |TP|      RQ = |TP| / (|TP| + ½|FP| + ½|FN|)      PQ = SQ × RQ

and the figures are averaged over the classes that occur (``|TP| + |FP| + |FN| > 0``): over all of them,
over the things and over the stuff. Void and crowd as in the paper (section 4.1) and COCO's panopticapi:

- ground-truth void pixels are removed from a predicted segment's area when matching
  (``union = |p| + |g| − |p ∩ g| − |p ∩ void|``);
- crowd segments of the ground truth match nothing and are no false negatives;
- an unmatched predicted segment is no false positive when more than half of it lies on ground-truth void
  or on crowd regions of its own category.

A predicted void pixel is simply a pixel that no segment claims: it stays in the ground-truth segment's
area. (torchmetrics' ``PanopticQuality`` differs there: it also removes predicted-void pixels from the
ground-truth area and ignores ground-truth segments mostly predicted void; it has no crowd regions. On
predictions without void and ground truth without crowd the two agree.)

Each image is scored with one ``bincount`` over the combined (ground truth, prediction) segment indices;
no Python loop runs over pixels or segment pairs. Malformed input is a one-line
:class:`~pixelseg.errors.PixelsegError` naming the file and the segment: an id in the map that
``segments_info`` lacks (and the reverse), an id listed twice, an unknown category.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import PixelsegError
from .base import Scores, all_reduce_sum, markdown_table

VOID = 0
FIGURES = ("PQ", "SQ", "RQ")


class PanopticSegmentation(Protocol):
    """What the evaluator reads from one image: ``pixelseg.data.coco_panoptic.PanopticAnnotation`` is one."""

    ids: Any  # (H, W) integer segment ids, numpy or torch; 0 is void
    segments_info: Sequence[Mapping[str, Any]]  # COCO: "id", "category_id", optional "iscrowd"
    file_name: str  # named in error messages


def _segment_table(segmentation: PanopticSegmentation, categories: Mapping[int, int], device: torch.device
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pixels as indices into the segment table (0 = void) and, per table row, its id, class index
    (-1 for void) and crowd flag. Checks ids and categories against ``segments_info``."""
    name = segmentation.file_name
    rows: dict[int, tuple[int, bool]] = {}
    for info in segmentation.segments_info:
        segment = int(info["id"])
        if segment == VOID:
            raise PixelsegError("segments_info lists id 0, which is void", name)
        if segment in rows:
            raise PixelsegError(f"segment {segment} is listed twice in segments_info", name)
        category = int(info["category_id"])
        if category not in categories:
            raise PixelsegError(f"segment {segment} has unknown category_id {category}", name)
        rows[segment] = (categories[category], bool(info.get("iscrowd", 0)))
    ordered = sorted(rows)
    ids = torch.tensor([VOID, *ordered], dtype=torch.int64, device=device)
    classes = torch.tensor([-1, *(rows[s][0] for s in ordered)], dtype=torch.int64, device=device)
    crowd = torch.tensor([False, *(rows[s][1] for s in ordered)], dtype=torch.bool, device=device)

    ids_map = segmentation.ids
    if not isinstance(ids_map, Tensor):
        ids_map = torch.from_numpy(np.asarray(ids_map).astype(np.int64))
    pixels = ids_map.to(device=device, dtype=torch.int64).reshape(-1)
    index = torch.searchsorted(ids, pixels).clamp_(max=len(ids) - 1)
    unknown = ids[index] != pixels
    if bool(unknown.any()):
        segment = int(pixels[unknown][0])
        raise PixelsegError(f"segment {segment} is in the id map but not in segments_info", name)
    return index, ids, classes, crowd


def panoptic_counts(prediction: PanopticSegmentation, target: PanopticSegmentation,
                    categories: Mapping[int, int]) -> Tensor:
    """``(num_classes, 4)`` float64 per-class sums of one image: IoU of the matches, TP, FP, FN.

    ``categories`` maps a category id to its class index. Crowd flags of ``prediction`` are ignored.
    """
    if tuple(np.shape(prediction.ids)) != tuple(np.shape(target.ids)):
        raise PixelsegError(f"prediction {prediction.file_name} has shape {tuple(np.shape(prediction.ids))}, "
                            f"the ground truth {tuple(np.shape(target.ids))}", target.file_name)
    device = prediction.ids.device if isinstance(prediction.ids, Tensor) else torch.device("cpu")
    pred, pred_ids, pred_class, _ = _segment_table(prediction, categories, device)
    true, true_ids, true_class, true_crowd = _segment_table(target, categories, device)
    for what, index, ids, segmentation in (("prediction", pred, pred_ids, prediction),
                                           ("ground truth", true, true_ids, target)):
        present = torch.zeros(len(ids), dtype=torch.bool, device=device)
        present[index] = True
        present[0] = True
        if not bool(present.all()):
            segment = int(ids[~present][0])
            raise PixelsegError(f"segment {segment} of the {what} is in segments_info but not in the id map",
                                segmentation.file_name)

    # one bincount: intersection[g, p] = |g ∩ p|, row 0 and column 0 are void
    num_true, num_pred = len(true_ids), len(pred_ids)
    intersection = torch.bincount(true * num_pred + pred, minlength=num_true * num_pred).reshape(num_true, num_pred)
    intersection = intersection.to(torch.float64)
    pred_area, true_area = intersection.sum(0), intersection.sum(1)
    pred_on_void = intersection[0]

    same = (true_class[:, None] == pred_class[None, :]) & (true_class[:, None] >= 0) & ~true_crowd[:, None]
    union = pred_area[None, :] + true_area[:, None] - intersection - pred_on_void[None, :]
    iou = torch.where(same & (intersection > 0), intersection / union.clamp(min=1), torch.zeros_like(union))
    matched = iou > 0.5  # at most one per row and per column (the paper's theorem 1)

    num_classes = len(set(categories.values()))
    counts = torch.zeros(num_classes, 4, dtype=torch.float64, device=device)
    true_pos = matched.nonzero()
    matched_class = true_class[true_pos[:, 0]]
    counts[:, 0].index_add_(0, matched_class, iou[matched])
    counts[:, 1].index_add_(0, matched_class, torch.ones_like(iou[matched]))

    false_neg = (~matched.any(1)) & (true_class >= 0) & ~true_crowd
    counts[:, 3].index_add_(0, true_class[false_neg], torch.ones(int(false_neg.sum()), dtype=torch.float64,
                                                                 device=device))

    crowd_same = true_crowd[:, None] & (true_class[:, None] == pred_class[None, :])
    ignored = pred_on_void + (intersection * crowd_same).sum(0)
    false_pos = (~matched.any(0)) & (pred_class >= 0) & (ignored <= 0.5 * pred_area)
    counts[:, 2].index_add_(0, pred_class[false_pos], torch.ones(int(false_pos.sum()), dtype=torch.float64,
                                                                 device=device))
    return counts


def quality_from_counts(counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class PQ, SQ, RQ from ``(num_classes, 4)`` sums; NaN for a class with no TP, FP nor FN, and SQ
    (hence PQ) 0 for one with false matches only, as panopticapi and torchmetrics count it."""
    iou, tp, fp, fn = counts.unbind(1)
    denominator = tp + 0.5 * fp + 0.5 * fn
    nan = torch.full_like(iou, math.nan)
    sq = torch.where(tp > 0, iou / tp.clamp(min=1), torch.zeros_like(iou))
    rq = tp / denominator.clamp(min=1e-300)
    absent = denominator == 0
    return (torch.where(absent, nan, sq * rq), torch.where(absent, nan, sq), torch.where(absent, nan, rq))


class PanopticQuality:
    """PQ, SQ, RQ of a stream of panoptic segmentations; an :class:`~pixelseg.metrics.base.Evaluator`.

    ``things`` and ``stuff`` are category ids; the classes are ordered things then stuff, as given.
    ``update(prediction, target)`` takes one :class:`PanopticSegmentation` each, or a sequence of them
    (a batch); the state is ``(num_classes, 4)`` sums (IoU, TP, FP, FN), so ``all_reduce`` adds them up.
    """

    def __init__(self, things: Collection[int], stuff: Collection[int],
                 class_names: Sequence[str] | None = None) -> None:
        self.category_ids = [int(c) for c in things] + [int(c) for c in stuff]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category ids repeated among things {list(things)} and stuff {list(stuff)}")
        self.is_thing = torch.tensor([True] * len(things) + [False] * len(stuff))
        self.categories = {category: index for index, category in enumerate(self.category_ids)}
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in self.category_ids]
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(f"{len(self.class_names)} class names for {len(self.category_ids)} categories")
        self.counts = torch.zeros(len(self.category_ids), 4, dtype=torch.float64)

    @classmethod
    def from_coco(cls, categories: Sequence[Mapping[str, Any]]) -> PanopticQuality:
        """From COCO panoptic categories (``id``, ``name``, ``isthing``)."""
        things = [c for c in categories if c.get("isthing", 0)]
        stuff = [c for c in categories if not c.get("isthing", 0)]
        return cls([c["id"] for c in things], [c["id"] for c in stuff],
                   [str(c.get("name", c["id"])) for c in things + stuff])

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, prediction: PanopticSegmentation | Sequence[PanopticSegmentation],
               target: PanopticSegmentation | Sequence[PanopticSegmentation]) -> None:
        """Add one image or a batch (equal-length sequences of predictions and ground truths)."""
        predictions = [prediction] if hasattr(prediction, "segments_info") else list(prediction)
        targets = [target] if hasattr(target, "segments_info") else list(target)
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} ground truths")
        for one_prediction, one_target in zip(predictions, targets, strict=True):
            self.counts += panoptic_counts(one_prediction, one_target, self.categories).cpu()

    def all_reduce(self, group: object | None = None) -> None:
        all_reduce_sum(self.counts, group)

    def _means(self, pq: Tensor, sq: Tensor, rq: Tensor, subset: Tensor) -> dict[str, float]:
        present = subset & ~pq.isnan()
        return {name: float(values[present].mean()) if bool(present.any()) else math.nan
                for name, values in zip(FIGURES, (pq, sq, rq), strict=True)}

    def compute(self) -> Scores:
        """``PQ``, ``SQ``, ``RQ`` (all classes), ``*_things``, ``*_stuff``, per-class lists ``*_per_class``
        (NaN for a class that never occurred) and the counts ``TP``, ``FP``, ``FN`` per class."""
        pq, sq, rq = quality_from_counts(self.counts)
        scores: Scores = {}
        everything = torch.ones_like(self.is_thing)
        for suffix, subset in (("", everything), ("_things", self.is_thing), ("_stuff", ~self.is_thing)):
            scores.update({name + suffix: value for name, value in self._means(pq, sq, rq, subset).items()})
        for name, values in zip(FIGURES, (pq, sq, rq), strict=True):
            scores[f"{name}_per_class"] = values.tolist()
        for column, name in ((1, "TP"), (2, "FP"), (3, "FN")):
            scores[f"{name}_per_class"] = self.counts[:, column].tolist()
        return scores

    def report(self, class_names: Sequence[str] | None = None) -> str:
        """PQ, SQ, RQ per class (classes that never occurred show ``—``), then the things and stuff means."""
        names = list(class_names) if class_names is not None else self.class_names
        scores = self.compute()
        table = markdown_table(names, {name: scores[f"{name}_per_class"] for name in FIGURES},
                               {name: scores[name] for name in FIGURES})
        return table + "\n\n" + ", ".join(f"{name}{part} {scores[name + part]:.4f}"
                                          for part in ("_things", "_stuff") for name in FIGURES)
