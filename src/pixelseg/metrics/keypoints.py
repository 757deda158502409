"""Keypoint AP, AP50, AP75 by object keypoint similarity (OKS), computed by pycocotools' ``COCOeval`` with
``iouType="keypoints"`` (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014,
arXiv:1405.0312; the COCO keypoint challenge's OKS).

OKS of a detection and a ground-truth object with ``K`` keypoints is the mean over the labelled ones of
``exp(-d_i² / (2 s² k_i²))``: ``d_i`` the distance of keypoint ``i``, ``s²`` the object's area and
``k_i = 2 σ_i`` a per-keypoint tolerance. OKS plays the part IoU plays for boxes; AP averages over OKS
thresholds 0.5:0.95.

The sigmas (:func:`keypoint_sigmas`):

- COCO's 17 person keypoints: COCO's own σ (``COCO_SIGMAS``, pycocotools' defaults), measured from
  the spread of human annotators on 5000 redundantly annotated images.
- The synthetic triangles (``pixelseg.data.keypoints.SyntheticKeypoints``, keypoints ``top``, ``left``,
  ``right``): σ = 0.025 for each corner (``TRIANGLE_SIGMAS``). Their labels have no annotator spread
  (they are the exact corners the image was drawn from), so σ is a tolerance we choose: a triangle corner
  is a sharp point, as sharply defined as COCO's best-located keypoints, the eyes (σ = 0.025). The area
  ``s²`` is the box area when the target gives no ``area`` (the synthetic set), so on its typical 26 x 26
  px box OKS reaches 0.5 at about 1.5 px of error and 0.95 at about 0.4 px.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from ..errors import PixelsegError
from .base import Scores
from .coco import coco_dictionary, gather_records

METRIC_NAMES = ("AP", "AP50", "AP75")
COCO_KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                       "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
                       "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
# COCO's per-keypoint sigmas, in COCO_KEYPOINT_NAMES order (pycocotools' Params.kpt_oks_sigmas).
COCO_SIGMAS = (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
               0.89, 0.89)
COCO_SIGMAS = tuple(s / 10 for s in COCO_SIGMAS)
TRIANGLE_KEYPOINT_NAMES = ("top", "left", "right")
TRIANGLE_SIGMAS = (0.025, 0.025, 0.025)


def keypoint_sigmas(keypoint_names: Sequence[str]) -> tuple[float, ...]:
    """The OKS sigmas of a set of keypoints: COCO's for COCO's 17, the triangles' for the synthetic set;
    any other set has no known sigmas and is refused in one line."""
    names = tuple(keypoint_names)
    if names == COCO_KEYPOINT_NAMES:
        return COCO_SIGMAS
    if names == TRIANGLE_KEYPOINT_NAMES:
        return TRIANGLE_SIGMAS
    raise PixelsegError(f"no OKS sigmas known for the keypoints {list(names)}: keypoint AP knows COCO's 17 "
                        f"person keypoints and the synthetic triangles' {list(TRIANGLE_KEYPOINT_NAMES)}")


def check_keypoints(keypoints: Tensor, num_keypoints: int, image_id: int, size: tuple[int, int] | None,
                    what: str = "ground truth") -> None:
    """Refuse in one line keypoints ``(N, K, 3)`` whose ``K`` is not ``num_keypoints`` or whose labelled
    points (visibility > 0) lie outside the ``(height, width)`` image."""
    if keypoints.ndim != 3 or keypoints.shape[1:] != (num_keypoints, 3):
        raise PixelsegError(f"image {image_id}: {what} keypoints have shape {tuple(keypoints.shape)}, expected "
                            f"(N, {num_keypoints}, 3) (x, y, visibility of each of {num_keypoints} keypoints)")
    if size is None or not len(keypoints):
        return
    height, width = size
    labelled = keypoints[..., 2] > 0
    x, y = keypoints[..., 0], keypoints[..., 1]
    outside = labelled & ((x < 0) | (y < 0) | (x > width) | (y > height))
    if outside.any():
        n, k = (int(v) for v in outside.nonzero()[0])
        raise PixelsegError(f"image {image_id}: {what} keypoint {k} of object {n} is at ({float(x[n, k]):.1f}, "
                            f"{float(y[n, k]):.1f}), outside the {width}x{height} image")


def _flat(keypoints: Sequence[Sequence[float]]) -> list[float]:
    return [float(v) for point in keypoints for v in point]


def keypoint_ground_truth(target: dict[str, Tensor], image_id: int, category_ids: Sequence[int]
                          ) -> list[dict[str, Any]]:
    """COCO keypoint annotations (without ``id``) of one image's target: ``boxes``, ``labels``,
    ``keypoints`` (N, K, 3) and optionally ``area`` (else the box area) and ``iscrowd``."""
    boxes = target["boxes"].tolist()
    areas = target["area"].tolist() if "area" in target else [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    crowd = target["iscrowd"].tolist() if "iscrowd" in target else [0] * len(boxes)
    return [{"image_id": int(image_id), "category_id": int(category_ids[label]),
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": int(is_crowd),
             "keypoints": _flat(points), "num_keypoints": int(sum(v > 0 for _, _, v in points))}
            for (x1, y1, x2, y2), label, points, area, is_crowd in zip(
                boxes, target["labels"].tolist(), target["keypoints"].tolist(), areas, crowd, strict=True)]


def keypoint_detections(output: dict[str, Tensor], image_id: int, category_ids: Sequence[int]
                        ) -> list[dict[str, Any]]:
    """COCO keypoint results of one image from a Keypoint R-CNN output (``keypoints`` (N, K, 3),
    ``scores``, ``labels``); the detection's score is its box score, as in COCO's keypoint challenge."""
    return [{"image_id": int(image_id), "category_id": int(category_ids[label]), "score": float(score),
             "keypoints": _flat([[x, y, 1.0] for x, y, _ in points])}
            for points, score, label in zip(output["keypoints"].tolist(), output["scores"].tolist(),
                                            output["labels"].tolist(), strict=True)]


def keypoint_metrics(ground_truth: dict[str, Any], results: list[dict[str, Any]], sigmas: Sequence[float]
                     ) -> dict[str, float]:
    """``keypoint_AP``, ``keypoint_AP50``, ``keypoint_AP75`` by pycocotools' COCOeval over OKS with
    ``sigmas``; every figure is 0 with no detections (and -1, "no ground truth", is reported as 0)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:  # pycocotools cannot load an empty result list
        return {f"keypoint_{name}": 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = json.loads(json.dumps(ground_truth))  # pycocotools edits what it is given
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(json.loads(json.dumps(results))), "keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # stats[0..2] are AP@[.5:.95], AP@.5, AP@.75 (keypoint stats have no "small" area range)
    return {f"keypoint_{name}": max(float(evaluator.stats[k]), 0.0) for k, name in enumerate(METRIC_NAMES)}


class KeypointEvaluator:
    """Keypoint AP (OKS) of a stream of detections; an :class:`~pixelseg.metrics.base.Evaluator` like
    :class:`~pixelseg.metrics.coco.CocoEvaluator`.

    ``class_names`` has the background first (label 0, no category); ``keypoint_names`` pick the OKS sigmas
    (:func:`keypoint_sigmas`) unless ``sigmas`` are given. ``update(outputs, targets, image_sizes)`` takes
    torchvision keypoint outputs and targets; keypoints of the wrong count, or labelled outside their image
    (when ``image_sizes`` (height, width) are given), are refused in one line naming the image.
    """

    def __init__(self, class_names: Sequence[str], category_ids: Sequence[int], keypoint_names: Sequence[str],
                 sigmas: Sequence[float] | None = None) -> None:
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.class_names, self.category_ids = list(class_names), list(category_ids)
        self.keypoint_names = list(keypoint_names)
        self.sigmas = tuple(sigmas) if sigmas is not None else keypoint_sigmas(self.keypoint_names)
        if len(self.sigmas) != len(self.keypoint_names):
            raise PixelsegError(f"{len(self.sigmas)} OKS sigmas for {len(self.keypoint_names)} keypoints")
        self.reset()

    def reset(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def update(self, prediction: Sequence[dict[str, Tensor]], target: Sequence[dict[str, Tensor]],
               image_sizes: Sequence[tuple[int, int]] | None = None) -> None:
        """Add a batch: one output dict and one target dict (and optionally the (height, width)) per image."""
        sizes = list(image_sizes) if image_sizes is not None else [None] * len(target)
        count = len(self.keypoint_names)
        for output, truth, size in zip(prediction, target, sizes, strict=True):
            image_id = int(truth["image_id"])
            check_keypoints(truth["keypoints"], count, image_id, size)
            check_keypoints(output["keypoints"], count, image_id, None, what="predicted")
            height, width = size if size is not None else (0, 0)
            self.images.append({"id": image_id, "file_name": str(image_id), "height": int(height),
                                "width": int(width)})
            self.annotations += keypoint_ground_truth(truth, image_id, self.category_ids)
            self.results += keypoint_detections(output, image_id, self.category_ids)

    def all_reduce(self, group: object | None = None) -> None:
        """Gather the images, annotations and detections of every process (in rank order) into each."""
        self.images, self.annotations, self.results = gather_records(
            self.images, self.annotations, self.results, group)

    def ground_truth(self) -> dict[str, Any]:
        """Everything added so far as a COCO keypoint dictionary (categories carry the keypoint names)."""
        dictionary = coco_dictionary(self.images, self.annotations, self.class_names, self.category_ids)
        for category in dictionary["categories"]:
            category["keypoints"] = list(self.keypoint_names)
        return dictionary

    def compute(self) -> Scores:
        """Keypoint AP, AP50, AP75 over everything added."""
        return dict(keypoint_metrics(self.ground_truth(), self.results, self.sigmas))

    def report(self, class_names: Sequence[str] | None = None) -> str:
        """The keypoint figures as a one-row Markdown table, with the sigmas used."""
        scores = self.compute()
        table = "| keypoints | " + " | ".join(METRIC_NAMES) + " |\n|---|" + "---|" * len(METRIC_NAMES) + "\n| all | " \
            + " | ".join(f"{float(scores[f'keypoint_{name}']):.4f}" for name in METRIC_NAMES) + " |"
        sigmas = ", ".join(f"{name} {sigma:g}" for name, sigma in zip(self.keypoint_names, self.sigmas, strict=True))
        return f"{table}\n\nkeypoint AP by OKS (pycocotools), sigmas: {sigmas}"

