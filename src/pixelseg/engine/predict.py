"""``pixelseg predict``: index PNG + colour overlay for every image of a folder (or one file).

Each output is written atomically; an unreadable input is reported in one line and skipped, the
others are still predicted, and the command exits non-zero if any failed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.folder import IMAGE_SUFFIXES, read_image
from ..data.transforms import normalize, to_chw_uint8
from ..errors import PixelsegError
from ..models.registry import from_pretrained
from .checkpoint import atomic_write_bytes
from .evaluate import model_data_info, resolve_model_dir
from .forward import forward_whole


def list_inputs(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PixelsegError("no images found", path)
        return files
    raise PixelsegError("no such file or directory", path)


def colorize(labels: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return table[labels]


def overlay(image: Image.Image, labels: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = colorize(labels, palette).astype(np.float32)
    return Image.fromarray((rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def index_png(labels: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A palette ('P' mode) PNG: pixel values are class indices, viewers show the class colours."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [channel for colour in palette for channel in colour][: 256 * 3]
    image.putpalette(flat + [0] * (256 * 3 - len(flat)))
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


LogitsFn = Callable[[torch.Tensor], torch.Tensor]
REFINE_METHODS = ("crf",)


def crf_labels(logits: torch.Tensor, image: Image.Image) -> np.ndarray:
    """Labels (H, W) of one image's logits (K, H, W) refined by the dense CRF (``--refine crf``)."""
    from ..classical.dense_crf import refine_logits

    return refine_logits(logits, np.asarray(image.convert("RGB"))).cpu().numpy()


def predict(model_path: str | Path, inputs: str | Path | Iterable[Path], out_dir: str | Path, *,
            device: str = "cpu", logits_fn: LogitsFn | None = None,
            on_error: Callable[[str], None] | None = None, refine: str | None = None) -> PredictReport:
    """Segment every input image; write ``<stem>.png`` (index) and ``<stem>_overlay.png``.

    ``logits_fn`` replaces the whole-image forward pass (tiling, TTA, another backend) if given.
    ``refine="crf"`` post-processes the logits with the dense CRF (``classical.dense_crf``).
    """
    if refine is not None and refine not in REFINE_METHODS:
        raise PixelsegError(f"unknown refinement {refine!r}; choose one of: {', '.join(REFINE_METHODS)}")
    model_dir = resolve_model_dir(model_path)
    model = from_pretrained(model_dir).to(device).eval()
    info, _ = model_data_info(model, model_dir)
    files = list_inputs(inputs) if isinstance(inputs, str | Path) else list(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = logits_fn or (lambda x: forward_whole(model, x))
    report = PredictReport()
    for path in files:
        try:
            image = read_image(path, info.image_mode)
        except PixelsegError as err:
            report.failed.append(str(err))
            if on_error:
                on_error(str(err))
            continue
        pixels = normalize(to_chw_uint8(image).float() / 255.0, info.mean, info.std)
        with torch.inference_mode():
            logits = run(pixels[None].to(device))
            labels = crf_labels(logits[0], image) if refine == "crf" else logits.argmax(1)[0].cpu().numpy()
        index_path, overlay_path = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.png"
        atomic_write_bytes(index_path, _png_bytes(index_png(labels, info.palette)))
        atomic_write_bytes(overlay_path, _png_bytes(overlay(image, labels, info.palette)))
        report.written += [index_path, overlay_path]
    return report
