"""Instance segmentation: a mask, a class and a score for every object (Mask R-CNN: He, Gkioxari, Dollár &
Girshick, ICCV 2017, arXiv:1703.06870).

Data come in torchvision's detection format (an image tensor and a target dict per image). The loss is the
sum of the detector's own losses (RPN, box, class, mask) — the data flip training images left to right
(``data.hflip``, ``pixelseg.data.instances.RandomFlipInstances``) — and BatchNorm statistics are recomputed before each validation
(:func:`recompute_batchnorm_statistics`). Scores: COCO box and mask AP, AP50, AP75 by pycocotools.
Prediction writes one overlay per image and, at the end, ``predictions.json`` (COCO results with RLE masks)
and ``images.json``, merged into those of earlier ``predict`` calls into the same folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.build import DataBundle, DatasetInfo
from ..errors import PixelsegError
from ..io.checkpoint import atomic_write_bytes
from ..io.images import image_to_tensor, list_images, read_rgb
from ..io.render import draw_instances, png_bytes
from ..metrics.coco import CocoEvaluator, detections_to_coco
from ..models.config import ModelConfig
from ..models.registry import create_model
from .base import (
    LossResult,
    PredictOptions,
    Predictor,
    Task,
    list_inputs,
    refuse_pixel_options,
    register_task,
)

Target = dict[str, Tensor]


def _read_records(path: Path) -> list[Any]:
    """The JSON list an earlier ``predict`` call wrote to ``path`` (empty when there is none)."""
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PixelsegError(f"cannot add to this file, it is not valid JSON ({error}); remove it or predict "
                            "into another --out", path) from None
    if not isinstance(records, list):
        raise PixelsegError("cannot add to this file, it is not a JSON list; remove it or predict into another "
                            "--out", path)
    return records


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterator[tuple[list[Tensor], list[Target]]],
                                   num_batches: int) -> None:
    """Precise BatchNorm: set every BN layer's running mean and variance to their average over
    ``num_batches`` training batches under the current weights (Wu & Johnson, "Rethinking 'Batch' in
    BatchNorm", 2021, arXiv:2105.07576).

    Trained from scratch with a fast-moving optimiser and small batches, the exponential running
    averages lag behind the weights so far that eval mode detects nothing; the batch statistics are
    fine. Only the backbone (with its FPN) holds BatchNorm layers, so only it is run.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_batches <= 0:
        return
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    model.train()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    for _ in range(num_batches):
        batch = next(batches, None)
        if batch is None:
            break
        image_list, _ = model.transform(batch[0])
        model.backbone(image_list.tensors)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


@register_task("instance")
class InstanceTask(Task):
    name = "instance"
    monitor = "mask_AP"
    drop_last = True
    precise_bn_batches = 50

    def build_model(self, model: ModelConfig, info: DatasetInfo) -> nn.Module:
        kwargs = dict(model.kwargs)
        if model.encoder_weights is not None:
            kwargs.setdefault("backbone_weights", model.encoder_weights)
        built = create_model(model.name, num_classes=info.num_classes, in_channels=model.in_channels or 3,
                             class_names=list(info.classes), **kwargs)
        built.pixelseg_config["category_ids"] = list(info.category_ids or range(info.num_classes))
        return built

    def loss(self, model: nn.Module, batch: Any, criterion: nn.Module | None, device: torch.device) -> LossResult:
        images, targets = batch
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        return LossResult(sum(losses.values()), parts=losses, count=len(images))

    def evaluator(self, info: DatasetInfo) -> CocoEvaluator:
        return CocoEvaluator(list(info.classes), list(info.category_ids or range(info.num_classes)))

    def evaluate_batch(self, forward: Callable[[Any], Any], batch: Any, evaluator: CocoEvaluator,
                       device: torch.device) -> None:
        images, targets = batch
        outputs = forward([image.to(device) for image in images])
        evaluator.update([{k: v.cpu() for k, v in o.items()} for o in outputs], targets)

    def prepare_evaluation(self, model: nn.Module, data: DataBundle, *, seed: int, batches: int,
                           batch_size: int) -> None:
        if batches <= 0:
            return
        loader = DataLoader(data.train, batch_size=batch_size, shuffle=True,
                            drop_last=True, collate_fn=data.collate, generator=torch.Generator().manual_seed(seed))
        recompute_batchnorm_statistics(model, iter(loader), batches)

    def predictor(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> Predictor:
        refuse_pixel_options("instance", options)
        return InstancePredictor(model, info, options)


class InstancePredictor(Predictor):
    """``<stem>_instances.png`` per image; ``predictions.json`` (COCO results: bbox x, y, w, h, score, RLE
    ``segmentation``, plus ``file_name`` and ``category_name``) and ``images.json`` for all of them.

    Predicting into a folder that already holds these two files adds to them rather than replacing them, so
    images may be predicted one call at a time: new images get ids after the existing ones, and an image
    predicted again (the same file name) keeps its id and has its old records replaced.
    """

    def __init__(self, model: nn.Module, info: DatasetInfo, options: PredictOptions,
                 mask_threshold: float = 0.5) -> None:
        self.model, self.info, self.device = model.eval(), info, options.device
        self.score_threshold, self.mask_threshold = options.score_threshold, mask_threshold
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []

    def list_inputs(self, path: Path) -> list[Path]:
        return list_inputs(path, list_images, "images")

    suffix = "instances"  # the picture of each image: <stem>_<suffix>.png

    def predict_file(self, path: Path, out_dir: Path) -> list[Path]:
        pixels = read_rgb(path)
        image_id = len(self.images)
        try:
            with torch.inference_mode():
                output = {k: v.cpu() for k, v in self.model([image_to_tensor(pixels).to(self.device)])[0].items()}
        except (RuntimeError, ValueError) as err:  # e.g. an image smaller than the network accepts
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise PixelsegError(f"inference failed ({reason})", path) from None
        keep = output["scores"] >= self.score_threshold
        output = {key: value[keep] for key, value in output.items()}
        classes = list(self.info.classes)
        category_ids = list(self.info.category_ids or range(len(classes)))
        for record, label in zip(self.records(output, image_id, len(classes)), output["labels"].tolist(), strict=True):
            record["category_id"] = category_ids[label] if label < len(category_ids) else label
            record["file_name"] = path.name
            record["category_name"] = classes[label] if label < len(classes) else str(label)
            self.results.append(record)
        self.images.append({"id": image_id, "file_name": path.name, "height": pixels.shape[0],
                            "width": pixels.shape[1]})
        target = out_dir / f"{path.stem}_{self.suffix}.png"
        atomic_write_bytes(target, png_bytes(self.picture(pixels, output)))
        return [target]

    def records(self, output: dict[str, Tensor], image_id: int, num_classes: int) -> list[dict[str, Any]]:
        """The COCO results of one image's kept detections (labels as class indices)."""
        return detections_to_coco(output, image_id, list(range(num_classes)), self.mask_threshold)

    def picture(self, pixels: np.ndarray, output: dict[str, Tensor]) -> Image.Image:
        """The image with every instance's mask, box, class name and score."""
        classes = list(self.info.classes)
        masks = (output["masks"][:, 0] > self.mask_threshold).numpy()
        names = [f"{classes[label] if label < len(classes) else label} {score:.2f}"
                 for label, score in zip(output["labels"].tolist(), output["scores"].tolist(), strict=True)]
        return draw_instances(pixels, masks, output["boxes"].numpy(), labels=names)

    def finish(self, out_dir: Path) -> list[Path]:
        predictions, images = out_dir / "predictions.json", out_dir / "images.json"
        old_results, old_images = _read_records(predictions), _read_records(images)
        for record in old_images:
            if not isinstance(record, dict) or not {"id", "file_name"} <= set(record):
                raise PixelsegError("not an images.json written by pixelseg predict (each image needs an id "
                                    "and a file_name); remove it or predict into another --out", images)
        ids = {record["file_name"]: record["id"] for record in old_images}
        next_id = max((int(record["id"]) for record in old_images), default=-1) + 1
        latest = {image["file_name"]: image["id"] for image in self.images}  # a name given twice: the last
        current = [image for image in self.images if latest[image["file_name"]] == image["id"]]
        results = [record for record in self.results if latest[record["file_name"]] == record["image_id"]]
        renumber = {}
        for image in current:  # the same file name keeps its id; a new one continues after the last
            if image["file_name"] not in ids:
                ids[image["file_name"]], next_id = next_id, next_id + 1
            renumber[image["id"]] = ids[image["file_name"]]
        replaced = set(renumber.values())
        merged_images = [r for r in old_images if r["id"] not in replaced] + \
            [{**image, "id": renumber[image["id"]]} for image in current]
        merged_results = [r for r in old_results if not (isinstance(r, dict) and r.get("image_id") in replaced)] + \
            [{**record, "image_id": renumber[record["image_id"]]} for record in results]
        atomic_write_bytes(predictions, json.dumps(merged_results).encode())
        atomic_write_bytes(images, json.dumps(sorted(merged_images, key=lambda r: r["id"]), indent=1).encode())
        return [predictions, images]

    def summary(self) -> list[str]:
        counts: dict[str, int] = {}
        for record in self.results:
            counts[record["file_name"]] = counts.get(record["file_name"], 0) + 1
        return [f"{image['file_name']}: {counts.get(image['file_name'], 0)} instance(s)" for image in self.images]

