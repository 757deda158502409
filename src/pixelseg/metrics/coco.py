"""COCO box and mask AP, AP50, AP75 of instance predictions, computed by pycocotools' ``COCOeval``.

The ground truth (torchvision detection targets: boxes, labels, masks, image_id, iscrowd) is converted to
a COCO object in memory (masks as RLE), the detections (torchvision detection outputs) to COCO results,
and pycocotools does the matching and the averaging over IoU thresholds 0.5:0.95 (Lin et al., "Microsoft
COCO: Common Objects in Context", ECCV 2014, arXiv:1405.0312), so the figures are the standard ones.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .base import Scores, markdown_table

METRIC_NAMES = ("AP", "AP50", "AP75")
KINDS = (("bbox", "box"), ("segm", "mask"))


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean ``(H, W)`` mask, with ``counts`` as a JSON-ready string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def detections_to_coco(output: dict[str, Tensor], image_id: int, category_ids: Sequence[int],
                       mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results (box and RLE mask per instance) of one image from a Mask R-CNN output dict."""
    masks = (output["masks"][:, 0] > mask_threshold).cpu().numpy()
    return [{"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": _xywh(box),
             "score": float(score), "segmentation": encode_mask(mask)}
            for box, score, label, mask in zip(output["boxes"].tolist(), output["scores"].tolist(),
                                               output["labels"].tolist(), masks, strict=True)]


def ground_truth_annotations(target: dict[str, Tensor], image_id: int,
                             category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO annotations (without ``id``) of one image's detection target."""
    return [{"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": _xywh(box),
             "area": float(mask.sum()), "iscrowd": int(crowd), "segmentation": encode_mask(mask.astype(bool))}
            for box, label, mask, crowd in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                               target["masks"].cpu().numpy(), target["iscrowd"].tolist(),
                                               strict=True)]


def coco_dictionary(images: list[dict[str, Any]], annotations: list[dict[str, Any]],
                    class_names: Sequence[str], category_ids: Sequence[int]) -> dict[str, Any]:
    """A COCO instance dictionary; the annotations are numbered 1, 2, ... and label 0 (background) has
    no category."""
    categories = [{"id": int(category_ids[label]), "name": name}
                  for label, name in enumerate(class_names) if label > 0]
    numbered = [{"id": number, **annotation} for number, annotation in enumerate(annotations, start=1)]
    return {"images": images, "annotations": numbered, "categories": categories}


class InstanceDataset(Protocol):
    """What :func:`ground_truth_coco` reads from a dataset (``pixelseg.data.instances``' datasets)."""

    class_names: list[str]
    category_ids: list[int]

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]: ...
    def image_info(self, index: int) -> dict[str, Any]: ...


def ground_truth_coco(dataset: InstanceDataset) -> dict[str, Any]:
    """The dataset as a COCO instance dictionary (images, categories, RLE annotations)."""
    images, annotations = [], []
    for index in range(len(dataset)):
        _, target = dataset[index]
        info = dataset.image_info(index)
        images.append({key: info[key] for key in ("id", "file_name", "height", "width")})
        annotations += ground_truth_annotations(target, info["id"], dataset.category_ids)
    return coco_dictionary(images, annotations, dataset.class_names, dataset.category_ids)


def _run_cocoeval(ground_truth: dict[str, Any], results: list[dict[str, Any]]
                  ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """COCOeval's AP/AP50/AP75 for boxes and masks (-1, "no ground truth", reported as 0) and the AP of
    each category in ``ground_truth["categories"]`` order (NaN where a category has no ground truth)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = len(ground_truth["categories"])
    metrics: dict[str, float] = {}
    per_class: dict[str, list[float]] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = json.loads(json.dumps(ground_truth))  # pycocotools edits what it is given
        truth.createIndex()
        for kind, prefix in KINDS:
            if not results:  # pycocotools cannot load an empty result list
                metrics.update({f"{prefix}_{name}": 0.0 for name in METRIC_NAMES})
                per_class[f"{prefix}_AP_per_class"] = [0.0] * categories
                continue
            evaluator = COCOeval(truth, truth.loadRes(json.loads(json.dumps(results))), kind)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            # stats[0..2] are AP@[.5:.95], AP@.5, AP@.75
            metrics.update({f"{prefix}_{name}": max(float(evaluator.stats[k]), 0.0)
                            for k, name in enumerate(METRIC_NAMES)})
            # precision: (IoU thresholds, recall points, categories, areas, max detections); area "all"
            # is 0 and the last max-detection setting is 100; -1 marks "no ground truth"
            precision = torch.as_tensor(evaluator.eval["precision"][:, :, :, 0, -1])
            defined = precision > -1
            sums = torch.where(defined, precision, torch.zeros_like(precision)).sum((0, 1))
            counts = defined.sum((0, 1))
            per_class[f"{prefix}_AP_per_class"] = torch.where(
                counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan"))).tolist()
    return metrics, per_class


def coco_metrics(ground_truth: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """``box_AP``, ``box_AP50``, ``box_AP75``, ``mask_AP``, ... from pycocotools' COCOeval.

    With no detections at all every figure is 0.
    """
    return _run_cocoeval(ground_truth, results)[0]



def gather_records(images: list[Any], annotations: list[Any], results: list[Any],
                   group: object | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """The COCO records of every process, in rank order (unchanged when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return images, annotations, results
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (images, annotations, results), group=group)
    return ([image for part, _, _ in gathered for image in part],
            [annotation for _, part, _ in gathered for annotation in part],
            [result for _, _, part in gathered for result in part])


class CocoEvaluator:
    """COCO box and mask AP of a stream of detections; an :class:`~pixelseg.metrics.base.Evaluator`.

    ``class_names`` has the background first (label 0, no category); ``category_ids[label]`` is the COCO
    id of a label. ``update(outputs, targets)`` takes a batch of torchvision detection outputs (``boxes``,
    ``labels``, ``scores``, ``masks`` (N, 1, H, W) probabilities, thresholded at ``mask_threshold``) and
    their targets (``boxes``, ``labels``, ``masks`` (N, H, W), ``image_id``, ``iscrowd``); it keeps the
    ground truth as COCO annotations with RLE masks and the detections as COCO results, and ``compute``
    runs COCOeval once over everything.
    """

    def __init__(self, class_names: Sequence[str], category_ids: Sequence[int], mask_threshold: float = 0.5
                 ) -> None:
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.class_names, self.category_ids = list(class_names), list(category_ids)
        self.mask_threshold = mask_threshold
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.images, self.annotations, self.results = [], [], []

    def update(self, prediction: Sequence[dict[str, Tensor]], target: Sequence[dict[str, Tensor]]) -> None:
        """Add a batch: one output dict and one target dict per image."""
        for output, truth in zip(prediction, target, strict=True):
            image_id = int(truth["image_id"])
            height, width = truth["masks"].shape[-2:]
            self.images.append({"id": image_id, "file_name": str(image_id), "height": int(height),
                                "width": int(width)})
            self.annotations += ground_truth_annotations(truth, image_id, self.category_ids)
            self.results += detections_to_coco(output, image_id, self.category_ids, self.mask_threshold)

    def all_reduce(self, group: object | None = None) -> None:
        """Gather the images, annotations and detections of every process (in rank order) into each."""
        self.images, self.annotations, self.results = gather_records(
            self.images, self.annotations, self.results, group)

    def ground_truth(self) -> dict[str, Any]:
        """Everything added so far as a COCO instance dictionary."""
        return coco_dictionary(self.images, self.annotations, self.class_names, self.category_ids)

    def compute(self) -> Scores:
        """The six COCO figures and the AP of each class (background excluded; NaN with no ground truth)."""
        metrics, per_class = _run_cocoeval(self.ground_truth(), self.results)
        return {**metrics, **per_class}

    def report(self, class_names: Sequence[str] | None = None) -> str:
        """Box and mask AP per class (the background has no row) and the overall figures."""
        names = list(class_names) if class_names is not None else self.class_names
        if len(names) == len(self.class_names):
            names = names[1:]
        scores = self.compute()
        return markdown_table(
            names, {"box AP": scores["box_AP_per_class"], "mask AP": scores["mask_AP_per_class"]},
            {"box AP": scores["box_AP"], "mask AP": scores["mask_AP"]}) + "\n\n" + ", ".join(
            f"{name} {scores[name]:.4f}" for _, prefix in KINDS for name in
            (f"{prefix}_{metric}" for metric in METRIC_NAMES))
