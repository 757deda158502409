"""Semantic segmentation: one class per pixel (Long, Shelhamer & Darrell, "Fully Convolutional Networks
for Semantic Segmentation", CVPR 2015, and every model after it).

Model: any registered segmentation model. Loss: the config's terms (``pixelseg.losses``) on the main logits
plus the weighted auxiliary heads. Scores: one confusion matrix over the whole split. Prediction: an
index PNG and a colour overlay per image (or a tiled TIFF when streaming), with optional tiling,
test-time augmentation, ONNX Runtime and the dense CRF (``pixelseg.refiners``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..data.build import DataBundle, DatasetInfo
from ..data.isbi import ISBI_CLASSES
from ..data.transforms import normalize, to_chw_uint8
from ..errors import PixelsegError
from ..inference.forward import forward_whole
from ..inference.runner import InferenceOptions, build_runner, logits_function
from ..inference.tiling import stream_predict
from ..io.checkpoint import atomic_write_bytes
from ..io.images import list_images, read_image
from ..io.render import index_png, overlay, png_bytes
from ..losses import build_loss
from ..metrics.confusion import ConfusionMatrix
from ..metrics.isbi import ISBIScores
from ..models.base import SegmentationOutput
from ..models.config import ModelConfig
from ..models.registry import create_model
from .base import LossResult, PredictOptions, Predictor, Task, list_inputs, register_task

REFINE_METHODS = ("crf",)


def saved_refiner(model: nn.Module) -> tuple[str | None, Any]:
    """The refiner saved with a model (``model.refine`` of its training config): its name and parameters
    (for ``crf``: a ``DenseCRFConfig``), or ``(None, None)``."""
    from ..refiners.dense_crf import DenseCRFConfig

    saved = getattr(model, "pixelseg_config", {}).get("refine")
    if not saved:
        return None, None
    if not isinstance(saved, dict) or saved.get("name") not in REFINE_METHODS:
        raise PixelsegError(f"model.refine must be a mapping with name one of {', '.join(REFINE_METHODS)}, "
                            f"not {saved!r}")
    params = {k: v for k, v in saved.items() if k != "name"}
    try:
        return saved["name"], DenseCRFConfig(**params)
    except TypeError as err:
        raise PixelsegError(f"model.refine: {err}") from None


def crop_target_to(target: Tensor, size: tuple[int, ...]) -> Tensor:
    """Centre-crop the target to a valid-convolution output (U-Net trains on the centre)."""
    if tuple(target.shape[-len(size):]) == tuple(size):
        return target
    starts = [(have - want) // 2 for have, want in zip(target.shape[-len(size):], size, strict=True)]
    index = (..., *(slice(s, s + n) for s, n in zip(starts, size, strict=True)))
    return target[index]


def segmentation_loss(output: Tensor | SegmentationOutput, target: Tensor, criterion: nn.Module,
                      pixel_weights: Tensor | None = None) -> Tensor:
    """Main loss plus weighted auxiliary losses (aux logits resized to the main logits' size);
    ``pixel_weights`` (U-Net's weight map, cropped like the target) weigh every pixel's term."""
    main = output.out if isinstance(output, SegmentationOutput) else output
    target = crop_target_to(target, tuple(main.shape[2:]))
    extra: tuple[Tensor, ...] = ()
    if pixel_weights is not None:
        if not getattr(criterion, "accepts_pixel_weights", False):
            raise PixelsegError("train.weight_map needs a loss that takes per-pixel weights (cross_entropy); "
                                f"the configured loss is {type(criterion).__name__}")
        extra = (crop_target_to(pixel_weights, tuple(main.shape[2:])),)
    loss = criterion(main, target, *extra)
    if isinstance(output, SegmentationOutput):
        mode = "bilinear" if main.dim() == 4 else "trilinear"
        for weight, aux in zip(output.aux_weights, output.aux, strict=True):
            if aux.shape[2:] != main.shape[2:]:
                aux = F.interpolate(aux, size=main.shape[2:], mode=mode, align_corners=False)
            loss = loss + weight * criterion(aux, target, *extra)
    return loss


@register_task("semantic")
class SemanticTask(Task):
    name = "semantic"
    monitor = "mean_iou"

    def build_model(self, model: ModelConfig, info: DatasetInfo) -> nn.Module:
        return create_model(model.name, num_classes=info.num_classes, in_channels=model.in_channels or info.in_channels,
                            encoder=model.encoder, encoder_weights=model.encoder_weights, **model.kwargs)

    def build_criterion(self, terms: Sequence[dict[str, Any]], data: DataBundle) -> nn.Module:
        return build_loss(terms, ignore_index=data.info.ignore_index)

    def loss(self, model: nn.Module, batch: Any, criterion: nn.Module | None, device: torch.device) -> LossResult:
        images, targets, *weights = batch  # (images, masks[, U-Net weight maps]) — train.weight_map
        images, targets = images.to(device), targets.to(device)
        pixel_weights = weights[0].to(device) if weights else None
        return LossResult(segmentation_loss(model(images), targets, criterion, pixel_weights),
                          count=images.shape[0])

    def evaluator(self, info: DatasetInfo) -> ConfusionMatrix:
        if list(info.classes) == ISBI_CLASSES:  # ISBI 2012 (membrane, cell): the challenge's errors too
            return ISBIScores(info.ignore_index)
        return ConfusionMatrix(info.num_classes, info.ignore_index)

    def evaluate_batch(self, forward: Callable[[Any], Any], batch: Any, evaluator: ConfusionMatrix,
                       device: torch.device) -> None:
        images, targets = batch
        logits = forward_whole(forward, images.to(device))  # type: ignore[arg-type]
        scorer = getattr(evaluator, "evaluator", evaluator)  # the report wraps the task's evaluator
        takes_logits = getattr(scorer, "takes_logits", False)  # ISBI's errors threshold probabilities
        evaluator.update(logits.cpu() if takes_logits else logits.argmax(1).cpu(), targets)

    def check_evaluation_options(self, tta_scales: Sequence[float] | None, tta_flip: bool,
                                 tta_rotate: bool = False) -> None:
        pass

    def inference_forward(self, model: nn.Module, forward: Callable[[Tensor], Tensor],
                          info: DatasetInfo) -> Callable[[Tensor], Tensor]:
        """``forward`` followed by the refiner saved with the model (the dense CRF), if there is one."""
        name, config = saved_refiner(model)
        if name is None:
            return forward
        from ..refiners.dense_crf import DenseCRFRefiner

        refiner = DenseCRFRefiner(tuple(info.mean), tuple(info.std), config)
        return lambda images: refiner(images, forward_whole(forward, images))  # type: ignore[arg-type]

    def predictor(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> Predictor:
        return ImagePredictor(model, model_dir, info, options)


class ImagePredictor(Predictor):
    """``<stem>.png`` (palette PNG of class indices) and ``<stem>_overlay.png`` per image; with
    ``--stream``, ``<stem>.tif`` (a tiled TIFF of class indices, read and written window by window)."""

    def __init__(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions,
                 logits_fn: Callable[[Tensor], Tensor] | None = None) -> None:
        self.info, self.device = info, options.device
        self.inference = options.inference or InferenceOptions()
        self.inference.check()
        self.refine, self.crf = options.refine, options.crf
        if self.refine is None and self.crf is None:  # the refiner saved with the model, if any
            self.refine, self.crf = saved_refiner(model)
        if self.refine is not None and self.refine not in REFINE_METHODS:
            raise PixelsegError(f"unknown refinement {self.refine!r}; choose one of: {', '.join(REFINE_METHODS)}")
        if self.refine is not None and self.inference.stream:
            raise PixelsegError("--refine does not combine with --stream")
        if self.crf is not None and self.refine != "crf":
            raise PixelsegError("the dense CRF parameters (--crf-*) need --refine crf")
        self.runner = build_runner(model, model_dir, self.inference, self.device) \
            if logits_fn is None or self.inference.stream else model
        self.logits = logits_fn or logits_function(self.runner, self.inference)

    def list_inputs(self, path: Path) -> list[Path]:
        return list_inputs(path, list_images, "images")

    def labels(self, image: Image.Image, source: str | Path | None = None) -> np.ndarray:
        """Class indices ``(H, W)`` of a decoded image: normalised, logits (whole or tiled, TTA, backend),
        argmax or the dense CRF. A failure is one ``PixelsegError`` naming ``source``."""
        info = self.info
        pixels = normalize(to_chw_uint8(image).float() / 255.0, info.mean, info.std)
        try:
            with torch.inference_mode():
                logits = self.logits(pixels[None].to(self.device))
                if self.refine == "crf":
                    return crf_labels(logits[0], image, self.crf)
                return logits.argmax(1)[0].cpu().numpy()
        except (RuntimeError, ValueError) as err:  # e.g. an image smaller than the network accepts
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise PixelsegError(f"inference failed ({reason})", source) from None

    def predict_file(self, path: Path, out_dir: Path) -> list[Path]:
        info, device = self.info, self.device
        if self.inference.stream:
            target = out_dir / f"{path.stem}.tif"
            stream_predict(self.runner, path, target, mean=info.mean, std=info.std, image_mode=info.image_mode,
                           tile=self.inference.tile or 1024, context=self.inference.overlap // 2, device=device)
            return [target]
        image = read_image(path, info.image_mode)
        labels = self.labels(image, path)
        index_path, overlay_path = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.png"
        atomic_write_bytes(index_path, png_bytes(index_png(labels, info.palette)))
        atomic_write_bytes(overlay_path, png_bytes(overlay(image, labels, info.palette)))
        return [index_path, overlay_path]


def crf_labels(logits: Tensor, image: Any, config: Any = None) -> np.ndarray:
    """Labels (H, W) of one image's logits (K, H, W) refined by the dense CRF (``--refine crf``)."""
    from ..refiners.dense_crf import refine_logits

    return refine_logits(logits, np.asarray(image.convert("RGB")), config).cpu().numpy()

