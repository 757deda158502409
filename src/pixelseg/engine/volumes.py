"""Prediction for 3D models (V-Net): ``pixelseg predict RUN volume.npy|volume.tif|FOLDER --out DIR``.

Each volume is read (``.npy`` never unpickled, multi-page ``.tif``), z-scored as in training
(``data.volumes``), segmented whole by the model and written as ``<stem>.npy`` (class indices ``(D, H, W)``,
uint8 up to 256 classes) and, when tifffile is installed, ``<stem>.tif`` (one page per slice). A volume that
cannot be read or segmented is reported in one line and the others are still written. ``runner`` replaces
the eager model (``--backend onnxruntime``: the exported graph, dynamic in depth, height and width).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.build import DatasetInfo
from ..data.volumes import VOLUME_SUFFIXES, image_volume, list_volume_files, normalize_volume, read_volume
from ..errors import PixelsegError
from ..models.base import main_logits
from ..io.checkpoint import atomic_write_bytes
from .predict import list_inputs


def _labels_for(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], path: Path, info: DatasetInfo,
                device: str) -> np.ndarray:
    image = image_volume(read_volume(path), path)
    if image.shape[0] != info.in_channels:
        raise PixelsegError(f"the model takes {info.in_channels}-channel volumes, this one has {image.shape[0]}",
                            path)
    volume = torch.from_numpy(np.ascontiguousarray(normalize_volume(image)))[None].to(device)
    try:
        with torch.inference_mode():
            labels = main_logits(model(volume)).argmax(1)[0].cpu().numpy()
    except (RuntimeError, ValueError) as err:
        raise PixelsegError(f"inference failed ({str(err).splitlines()[0][:200]})", path) from None
    return labels.astype(np.uint8 if info.num_classes <= 256 else np.int32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _tif_bytes(array: np.ndarray) -> bytes | None:
    try:
        import tifffile
    except ImportError:
        return None
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def predict_volumes(model: nn.Module, info: DatasetInfo, inputs: str | Path | Iterable[Path], out_dir: str | Path,
                    *, device: str = "cpu", shard: tuple[int, int] = (0, 1),
                    on_error: Callable[[str], None] | None = None,
                    runner: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[Path], list[str]]:
    """Segment every input volume with the model (or ``runner``); return (files written, one-line failures)."""
    files = (list_inputs(inputs, list_volume_files, f"volumes ({', '.join(VOLUME_SUFFIXES)})")
             if isinstance(inputs, str | Path) else list(inputs))
    rank, world = shard
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    written: list[Path] = []
    failed: list[str] = []
    for path in files[rank::world]:
        try:
            labels = _labels_for(runner or model, path, info, device)
        except PixelsegError as err:
            failed.append(str(err))
            if on_error:
                on_error(str(err))
            continue
        target = out_dir / f"{path.stem}.npy"
        atomic_write_bytes(target, _npy_bytes(labels))
        written.append(target)
        tif = _tif_bytes(labels)
        if tif is not None:
            atomic_write_bytes(out_dir / f"{path.stem}.tif", tif)
            written.append(out_dir / f"{path.stem}.tif")
    return written, failed
