"""Keypoints: a box, a class and ``K`` named keypoints for every object (Keypoint R-CNN: He, Gkioxari, Dollár &
Girshick, ICCV 2017, arXiv:1703.06870, Section 5; ``models/keypoint_rcnn.py``).

Data come in torchvision's keypoint detection format (an image tensor and a target dict per image with
``boxes``, ``labels``, ``keypoints`` (N, K, 3) as x, y, visibility): ``pixelseg.data.keypoints``; the dataset's
keypoint names (``DatasetInfo.keypoint_names``) set the model's ``num_keypoints``. Training is the instance
task's: the loss is the sum of the detector's own losses (RPN, box, class and the keypoint head's softmax over
the one-hot keypoint masks), with precise BatchNorm before each validation; a target whose keypoints are not
``K`` per object or lie outside the image is refused in one line. Scores: keypoint AP, AP50, AP75 by OKS with
pycocotools (``pixelseg.metrics.keypoints``); ``keypoint_AP`` picks the best checkpoint. Prediction writes one
overlay per image (``<stem>_keypoints.png``: boxes, keypoints, the skeleton of each object) and, at the end,
``predictions.json`` (COCO keypoint results) and ``images.json``, merged like the instance task's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ..data.build import DatasetInfo
from ..errors import PixelsegError
from ..io.render import draw_instances, instance_colours
from ..metrics.keypoints import KeypointEvaluator, check_keypoints, keypoint_detections
from ..models.config import ModelConfig
from .base import LossResult, PredictOptions, Predictor, refuse_pixel_options, register_task
from .instance import InstancePredictor, InstanceTask


def _keypoint_names(info: DatasetInfo) -> list[str]:
    if not info.keypoint_names:
        raise PixelsegError("keypoint data must name its keypoints (DatasetInfo.keypoint_names)")
    return list(info.keypoint_names)


def _check_batch(images: list[Any], targets: list[dict[str, Any]], num_keypoints: int) -> None:
    for image, target in zip(images, targets, strict=True):
        check_keypoints(target["keypoints"], num_keypoints, int(target["image_id"]), tuple(image.shape[-2:]))


@register_task("keypoints")
class KeypointTask(InstanceTask):
    name = "keypoints"
    monitor = "keypoint_AP"

    def build_model(self, model: ModelConfig, info: DatasetInfo) -> nn.Module:
        names = _keypoint_names(info)
        given = model.kwargs.get("num_keypoints")
        if given is not None and given != len(names):
            raise PixelsegError(f"model.kwargs.num_keypoints is {given} but the data has {len(names)} keypoints "
                                f"({', '.join(names)})")
        kwargs = {**model.kwargs, "num_keypoints": len(names), "keypoint_names": names}
        return super().build_model(replace(model, kwargs=kwargs), info)

    def loss(self, model: nn.Module, batch: Any, criterion: nn.Module | None, device: torch.device) -> LossResult:
        images, targets = batch
        _check_batch(images, targets, len(getattr(model, "module", model).keypoint_names))  # DDP wraps it
        return super().loss(model, batch, criterion, device)

    def evaluator(self, info: DatasetInfo) -> KeypointEvaluator:
        return KeypointEvaluator(list(info.classes), list(info.category_ids or range(info.num_classes)),
                                 _keypoint_names(info))

    def evaluate_batch(self, forward: Callable[[Any], Any], batch: Any, evaluator: KeypointEvaluator,
                       device: torch.device) -> None:
        images, targets = batch
        outputs = forward([image.to(device) for image in images])
        evaluator.update([{k: v.cpu() for k, v in o.items()} for o in outputs], targets,
                         [tuple(image.shape[-2:]) for image in images])

    def predictor(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> Predictor:
        refuse_pixel_options("keypoints", options)
        return KeypointPredictor(model, info, options)


class KeypointPredictor(InstancePredictor):
    """``<stem>_keypoints.png`` per image; ``predictions.json`` (COCO keypoint results: ``keypoints`` as
    x, y, v triples, ``score``, ``bbox`` x, y, w, h, plus ``file_name`` and ``category_name``) and
    ``images.json`` for all of them, added to those already in the folder (see :class:`InstancePredictor`)."""

    suffix = "keypoints"

    def records(self, output: dict[str, Tensor], image_id: int, num_classes: int) -> list[dict[str, Any]]:
        records = keypoint_detections(output, image_id, list(range(num_classes)))
        for record, box in zip(records, output["boxes"].tolist(), strict=True):
            record["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        return records

    def picture(self, pixels: np.ndarray, output: dict[str, Tensor]) -> Image.Image:
        """Boxes with their scores, each object's keypoints joined in order (a closed skeleton) and dotted."""
        names = [f"{score:.2f}" for score in output["scores"].tolist()]
        boxes = output["boxes"].numpy()
        no_masks = np.zeros((len(boxes), *pixels.shape[:2]), dtype=bool)
        picture = draw_instances(pixels, no_masks, boxes, labels=names)
        pen = ImageDraw.Draw(picture)
        radius = max(1.5, min(picture.size) / 100)
        for points, colour in zip(output["keypoints"].tolist(), instance_colours(len(boxes)), strict=True):
            xy = [(x, y) for x, y, _ in points]
            pen.line([*xy, xy[0]], fill=colour, width=1)
            for x, y in xy:
                pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
        return picture

    def summary(self) -> list[str]:
        counts: dict[str, int] = {}
        for record in self.results:
            counts[record["file_name"]] = counts.get(record["file_name"], 0) + 1
        return [f"{image['file_name']}: {counts.get(image['file_name'], 0)} object(s) with keypoints"
                for image in self.images]
