"""Volumetric segmentation: one class per voxel of a 3D volume (V-Net: Milletari, Navab & Ahmadi, 3DV 2016,
arXiv:1606.04797).

Training and scoring are the semantic task's on ``(B, C, D, H, W)`` tensors: random ``patch_size`` crops
for training, whole volumes for validation, one confusion matrix over all voxels. Prediction segments
whole volumes (``.npy`` — never unpickled — or multi-page ``.tif``, z-scored as in training) and writes
``<stem>.npy`` (class indices ``(D, H, W)``) and, when tifffile is installed, ``<stem>.tif``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.build import DatasetInfo
from ..data.volumes import image_volume, normalize_volume
from ..errors import PixelsegError
from ..inference.runner import onnx_runner
from ..io.checkpoint import atomic_write_bytes
from ..io.volumes import VOLUME_SUFFIXES, list_volume_files, npy_bytes, read_volume, tif_bytes
from ..models.base import main_logits
from .base import PredictOptions, Predictor, list_inputs, register_task
from .semantic import SemanticTask


@register_task("volumetric")
class VolumetricTask(SemanticTask):
    name = "volumetric"
    monitor = "mean_iou"

    def check_evaluation_options(self, tta_scales: Sequence[float] | None, tta_flip: bool,
                                 tta_rotate: bool = False) -> None:
        if tta_scales is not None and any(scale != 1.0 for scale in tta_scales):
            raise PixelsegError("--tta-scales: multi-scale TTA resizes 2D images; volumetric models take "
                                "--tta-flip and --tta-rotate (in-plane) only")

    def predictor(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> Predictor:
        return VolumePredictor(model, model_dir, info, options)


class VolumePredictor(Predictor):
    """``<stem>.npy`` (and ``<stem>.tif``) label volumes, eager or on ONNX Runtime (``--backend``)."""

    inputs_named = "volumes"

    def __init__(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> None:
        inference = options.inference
        if inference is not None:
            inference.check()
            unsupported = {"--refine": options.refine is not None,
                           "--optimize/--compile": inference.optimize or inference.compile,
                           "--tile": inference.tile is not None, "--tta-*": inference.uses_tta,
                           "--stream": inference.stream, "--precision": inference.precision != "fp32",
                           f"--backend {inference.backend}": inference.backend not in ("torch", "onnxruntime")}
        else:
            unsupported = {"--refine": options.refine is not None}
        named = [flag for flag, given in unsupported.items() if given]
        if named:
            raise PixelsegError(f"{', '.join(named)}: not available for volumetric (3D) models; they segment "
                                "whole volumes")
        if inference is not None and inference.threads:
            torch.set_num_threads(inference.threads)
        self.model: nn.Module | Callable[[torch.Tensor], torch.Tensor] = model
        if inference is not None and inference.backend == "onnxruntime":
            self.model = onnx_runner(model, model_dir, inference.threads)
        self.info, self.device = info, options.device

    def list_inputs(self, path: Path) -> list[Path]:
        return list_inputs(path, list_volume_files, f"volumes ({', '.join(VOLUME_SUFFIXES)})")

    def predict_file(self, path: Path, out_dir: Path) -> list[Path]:
        labels = self._labels(path)
        target = out_dir / f"{path.stem}.npy"
        atomic_write_bytes(target, npy_bytes(labels))
        written = [target]
        tif = tif_bytes(labels)
        if tif is not None:
            atomic_write_bytes(out_dir / f"{path.stem}.tif", tif)
            written.append(out_dir / f"{path.stem}.tif")
        return written

    def _labels(self, path: Path) -> np.ndarray:
        info = self.info
        image = image_volume(read_volume(path), path)
        if image.shape[0] != info.in_channels:
            raise PixelsegError(f"the model takes {info.in_channels}-channel volumes, this one has "
                                f"{image.shape[0]}", path)
        volume = torch.from_numpy(np.ascontiguousarray(normalize_volume(image)))[None].to(self.device)
        try:
            with torch.inference_mode():
                labels = main_logits(self.model(volume)).argmax(1)[0].cpu().numpy()
        except (RuntimeError, ValueError) as err:
            raise PixelsegError(f"inference failed ({str(err).splitlines()[0][:200]})", path) from None
        return labels.astype(np.uint8 if info.num_classes <= 256 else np.int32)
