"""Panoptic segmentation: every pixel gets a class and, for things, an instance (Kirillov, He, Girshick,
Rother & Dollár, CVPR 2019, arXiv:1801.00868), here with Panoptic FPN (Kirillov, Girshick, He & Dollár,
CVPR 2019, arXiv:1901.02446; ``models/panoptic_fpn.py``).

Data come as instance data (``pixelseg.data.instances``: an image tensor and a detection target per image)
whose targets also hold the semantic branch's ``semantic`` map and the panoptic ground truth (``panoptic``
ids, ``segments`` rows ``id, category_id, iscrowd``): ``pixelseg.data.synthetic_panoptic``. The classes are the
panoptic categories, things then stuff (``DatasetInfo.isthing``). Training is the instance task's: the loss is
the sum of the model's losses (RPN, box, class, mask and λ_s · semantic), with precise BatchNorm before each
validation. Scores: panoptic quality (``pixelseg.metrics.panoptic.PanopticQuality``): PQ, SQ, RQ over all
classes, things and stuff; ``PQ`` picks the best checkpoint. Prediction writes a coloured overlay per image
(``<stem>_panoptic.png``) and, at the end, the COCO panoptic format: ``panoptic.json`` and the id PNGs in
``panoptic/`` (``pixelseg.data.coco_panoptic.write_panoptic``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data.build import DatasetInfo
from ..data.coco_panoptic import PanopticAnnotation, write_panoptic
from ..errors import PixelsegError
from ..io.checkpoint import atomic_write_bytes
from ..io.images import image_to_tensor, list_images, read_rgb
from ..io.render import instance_colours, png_bytes
from ..metrics.panoptic import PanopticQuality
from ..models.config import ModelConfig
from ..models.registry import create_model
from .base import PredictOptions, Predictor, list_inputs, refuse_pixel_options, register_task
from .instance import InstanceTask


def _split_classes(info: DatasetInfo) -> tuple[list[int], list[int]]:
    """The indices of the thing classes and of the stuff classes of ``info``."""
    if info.isthing is None or len(info.isthing) != info.num_classes:
        raise PixelsegError("panoptic data must say which classes are things (DatasetInfo.isthing)")
    things = [k for k, thing in enumerate(info.isthing) if thing]
    stuff = [k for k, thing in enumerate(info.isthing) if not thing]
    if not things or not stuff:
        raise PixelsegError(f"panoptic data needs thing and stuff classes, got {info.classes} with isthing "
                            f"{info.isthing}")
    return things, stuff


def _category_ids(info: DatasetInfo) -> list[int]:
    return list(info.category_ids or range(1, info.num_classes + 1))


def categories_of(info: DatasetInfo) -> list[dict[str, Any]]:
    """The COCO panoptic categories of ``info``: ``id``, ``name``, ``isthing``, ``color``."""
    return [{"id": category, "name": name, "isthing": int(bool(thing)), "color": list(colour)}
            for category, name, thing, colour in zip(_category_ids(info), info.classes, info.isthing or [],
                                                     info.palette, strict=True)]


def to_annotation(ids: Tensor, segments: Tensor, info: DatasetInfo, file_name: str,
                  image_id: int | None = None) -> PanopticAnnotation:
    """A model's ``panoptic`` ids and ``segments`` (``id, label, isthing``) as a COCO panoptic annotation:
    thing label ``k`` is the k-th thing category, stuff label ``k`` the k-th stuff category."""
    things, stuff = _split_classes(info)
    category_ids = _category_ids(info)
    segments_info = []
    for segment, label, thing in segments.tolist():
        classes = things if thing else stuff
        if not 1 <= label <= len(classes):
            raise PixelsegError(f"segment {segment}: label {label} is outside the model's "
                                f"{'thing' if thing else 'stuff'} classes", file_name)
        segments_info.append({"id": int(segment), "category_id": category_ids[classes[label - 1]], "iscrowd": 0})
    return PanopticAnnotation(ids.cpu().numpy().astype(np.int64), segments_info, file_name, image_id)


def target_annotation(target: dict[str, Tensor]) -> PanopticAnnotation:
    """The panoptic ground truth carried by a target (``panoptic`` ids, ``segments``)."""
    image_id = int(target["image_id"]) if "image_id" in target else None
    segments_info = [{"id": s, "category_id": c, "iscrowd": crowd} for s, c, crowd in target["segments"].tolist()]
    return PanopticAnnotation(target["panoptic"].cpu().numpy().astype(np.int64), segments_info,
                              f"image {image_id}", image_id)


class PanopticScores(PanopticQuality):
    """Panoptic quality over the classes of ``info`` (things, then stuff), which it keeps to name the
    categories of a model's segments."""

    def __init__(self, info: DatasetInfo) -> None:
        things, stuff = _split_classes(info)
        category_ids = _category_ids(info)
        super().__init__([category_ids[k] for k in things], [category_ids[k] for k in stuff],
                         [info.classes[k] for k in things + stuff])
        self.info = info

    def update(self, prediction: Any, target: Any) -> None:
        """Add a batch: the model's outputs (``panoptic``, ``segments``) and the data's targets (``panoptic``,
        ``segments``), or already :class:`PanopticAnnotation` objects."""
        if isinstance(target, list) and target and isinstance(target[0], dict):
            target = [target_annotation(one) for one in target]
        if isinstance(prediction, list) and prediction and isinstance(prediction[0], dict):
            prediction = [to_annotation(output["panoptic"], output["segments"], self.info, truth.file_name)
                          for output, truth in zip(prediction, target, strict=True)]
        super().update(prediction, target)


@register_task("panoptic")
class PanopticTask(InstanceTask):
    """Loss, precise BatchNorm and batching as the instance task; its own model, scores and predictions."""

    name = "panoptic"
    monitor = "PQ"

    def build_model(self, model: ModelConfig, info: DatasetInfo) -> nn.Module:
        things, stuff = _split_classes(info)
        kwargs = dict(model.kwargs)
        if model.encoder_weights is not None:
            kwargs.setdefault("backbone_weights", model.encoder_weights)
        built = create_model(model.name, num_classes=len(things) + 1, in_channels=model.in_channels or 3,
                             num_stuff_classes=len(stuff), class_names=["background", *(info.classes[k] for k in things)],
                             stuff_names=[info.classes[k] for k in stuff], **kwargs)
        built.pixelseg_config["category_ids"] = _category_ids(info)
        return built

    def evaluator(self, info: DatasetInfo) -> PanopticScores:
        return PanopticScores(info)

    def evaluate_batch(self, forward: Callable[[Any], Any], batch: Any, evaluator: PanopticScores,
                       device: torch.device) -> None:
        images, targets = batch
        outputs = forward([image.to(device) for image in images])
        evaluator.update([{key: value.cpu() for key, value in output.items()} for output in outputs], targets)

    def predictor(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> Predictor:
        refuse_pixel_options("panoptic", options)
        _split_classes(info)
        return PanopticPredictor(model, info, options)


def draw_panoptic(image: np.ndarray, ids: np.ndarray, segments: list[tuple[int, int, bool]],
                  palette: list[list[int]], alpha: float = 0.5) -> Image.Image:
    """The RGB image with every stuff segment blended in its class colour and every thing in its own colour,
    segment borders drawn in white. ``segments``: ``(id, class index, isthing)``."""
    lookup = np.zeros((int(ids.max(initial=0)) + 1, 3), dtype=np.float32)
    colours = iter(instance_colours(sum(1 for _, _, thing in segments if thing)))
    for segment, index, thing in segments:
        lookup[segment] = next(colours) if thing else palette[index]
    canvas = image.astype(np.float32)
    labelled = ids > 0
    canvas[labelled] = (1 - alpha) * canvas[labelled] + alpha * lookup[ids[labelled]]
    border = np.zeros(ids.shape, dtype=bool)
    border[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    border[1:, :] |= ids[1:, :] != ids[:-1, :]
    canvas[border] = 255.0
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))


class PanopticPredictor(Predictor):
    """``<stem>_panoptic.png`` (coloured overlay) per image; ``panoptic.json`` and ``panoptic/<stem>.png``
    (COCO panoptic: id = R + 256·G + 256²·B) for all of them, written again by each ``predict`` call. Instances
    enter the fusion when they score at least ``--score-threshold``."""

    def __init__(self, model: nn.Module, info: DatasetInfo, options: PredictOptions) -> None:
        self.model, self.info, self.device = model.eval(), info, options.device
        if hasattr(self.model, "instance_score_threshold"):
            self.model.instance_score_threshold = options.score_threshold
        self.annotations: dict[str, PanopticAnnotation] = {}  # by PNG name: an image given twice, the last
        self.images: dict[str, dict[str, Any]] = {}

    def list_inputs(self, path: Path) -> list[Path]:
        return list_inputs(path, list_images, "images")

    def predict_file(self, path: Path, out_dir: Path) -> list[Path]:
        pixels = read_rgb(path)
        try:
            with torch.inference_mode():
                output = self.model([image_to_tensor(pixels).to(self.device)])[0]
        except (RuntimeError, ValueError) as err:  # e.g. an image smaller than the network accepts
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise PixelsegError(f"inference failed ({reason})", path) from None
        name = f"{path.stem}.png"
        image_id = self.images[name]["id"] if name in self.images else len(self.images)
        annotation = to_annotation(output["panoptic"], output["segments"], self.info, name, image_id)
        self.annotations[name] = annotation
        self.images[name] = {"id": image_id, "file_name": path.name, "height": pixels.shape[0],
                             "width": pixels.shape[1]}
        index_of = {category: k for k, category in enumerate(_category_ids(self.info))}
        drawn = [(int(s["id"]), index_of[s["category_id"]], bool(self.info.isthing[index_of[s["category_id"]]]))
                 for s in annotation.segments_info]
        target = out_dir / f"{path.stem}_panoptic.png"
        atomic_write_bytes(target, png_bytes(draw_panoptic(pixels, annotation.ids, drawn, self.info.palette)))
        return [target]

    def finish(self, out_dir: Path) -> list[Path]:
        if not self.annotations:
            return []
        json_path = out_dir / "panoptic.json"
        write_panoptic(list(self.annotations.values()), categories_of(self.info), json_path, out_dir / "panoptic",
                       images=list(self.images.values()))
        return [json_path, *(out_dir / "panoptic" / name for name in self.annotations)]

    def summary(self) -> list[str]:
        lines = []
        for name, annotation in self.annotations.items():
            index_of = {category: k for k, category in enumerate(_category_ids(self.info))}
            things = sum(1 for s in annotation.segments_info if self.info.isthing[index_of[s["category_id"]]])
            lines.append(f"{self.images[name]['file_name']}: {things} thing(s), "
                         f"{len(annotation.segments_info) - things} stuff segment(s)")
        return lines
