"""Uploaded bytes → a prediction of the served model, with no file written for semantic models.

The model is loaded once (``models.pretrained.from_pretrained``) and its task decides the answer:
semantic models give class indices (through the task's ``ImagePredictor``: backend, saved dense CRF),
instance models give the COCO records ``pixelseg predict`` writes to ``predictions.json`` (their
predictor runs on a temporary copy of the upload, so the JSON is exactly the command's).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..engine.evaluate import task_of
from ..errors import PixelsegError
from ..io.images import oriented, to_mode
from ..io.render import index_png, overlay, png_bytes
from ..io.saved_model import resolve_model_dir
from ..models.pretrained import from_pretrained
from ..tasks.base import PredictOptions, model_info
from ..tasks.semantic import ImagePredictor

# What an upload may be; Pillow's rarer formats (EPS through Ghostscript, PSD, ...) are refused.
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
FORMATS = ("json", "label", "overlay")


@dataclass(frozen=True)
class Limits:
    """What one server accepts: upload size and pixels, concurrent inferences, waiting requests, time."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    workers: int = 1  # inferences at once (threads; torch uses its intra-op threads inside each)
    queue: int = 16  # requests waiting for a worker before new ones get 503
    timeout_s: float = 60.0  # a request waiting or running longer gets 504

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "workers"):
            if getattr(self, name) < 1:
                raise PixelsegError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue < 0:
            raise PixelsegError(f"queue must be at least 0, got {self.queue}")
        if not self.timeout_s > 0:
            raise PixelsegError(f"timeout must be positive, got {self.timeout_s}")


class UploadRefused(Exception):
    """An upload the server will not segment: the HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def decode_upload(data: bytes, mode: str, max_pixels: int) -> Image.Image:
    """The uploaded image decoded, turned by its EXIF orientation and converted to ``mode``. Refuses
    (``UploadRefused``) an image of more than ``max_pixels`` before decoding its pixels (413), bytes
    that are not an image of :data:`UPLOAD_FORMATS` (415) and an image that fails to decode (400)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        except Image.DecompressionBombError as err:
            raise UploadRefused(413, f"image too large ({_first_line(err)})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise UploadRefused(415, f"not an image ({', '.join(UPLOAD_FORMATS)} accepted): "
                                     f"{_first_line(err)}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise UploadRefused(413, f"image too large: {width}x{height} = {width * height:,} pixels, over the "
                                     f"limit of {max_pixels:,} (a decompression bomb?)")
        try:
            return to_mode(oriented(image), mode)
        except Image.DecompressionBombError as err:
            raise UploadRefused(413, f"image too large ({_first_line(err)})") from None
        except Exception as err:  # Pillow raises many types for truncated or corrupt data
            raise UploadRefused(400, f"unreadable image ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


@dataclass
class Prediction:
    """One answer: a body and its media type."""

    body: bytes
    media_type: str


# The JSON file a detector task's predictor writes (``pixelseg predict``), returned as is by the server.
NATIVE_JSON = {"instance": "predictions.json", "keypoints": "predictions.json", "panoptic": "panoptic.json"}


class ServedModel:
    """A saved semantic, instance or panoptic model, loaded once, segmenting uploads (thread-safe: inference only)."""

    def __init__(self, model_path: str | Path, *, device: str = "cpu", max_pixels: int = Limits.max_pixels) -> None:
        self.model_dir = resolve_model_dir(model_path)
        self.model = from_pretrained(self.model_dir).to(device).eval()
        self.task = task_of(self.model)
        self.info = model_info(self.model, self.model_dir)
        self.device, self.max_pixels = device, max_pixels
        self.options = PredictOptions(device=device)
        if self.task.name == "semantic":
            self.predictor = ImagePredictor(self.model, self.model_dir, self.info, self.options)
        elif self.task.name not in NATIVE_JSON:
            raise PixelsegError(f"{self.task.name} models are not served (semantic, instance and panoptic models "
                                "are)", self.model_dir)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists for this model."""
        config = self.model.pixelseg_config
        return {"id": self.model_dir.name, "architecture": config.get("name"), "task": self.task.name,
                "classes": list(self.info.classes), "palette": [list(c) for c in self.info.palette],
                "image_mode": self.info.image_mode,
                "formats": list(FORMATS) if self.task.name == "semantic" else ["json", "overlay"]}

    def segment(self, data: bytes, filename: str, answer: str) -> Prediction:
        """The prediction of the uploaded bytes as ``answer`` (one of :data:`FORMATS`)."""
        if answer not in FORMATS:
            raise UploadRefused(400, f"format must be one of {', '.join(FORMATS)}, not {answer!r}")
        if self.task.name in NATIVE_JSON:
            return self._detections(data, filename, answer)
        image = decode_upload(data, self.info.image_mode, self.max_pixels)
        labels = self.labels(image)
        if answer == "label":
            return Prediction(png_bytes(index_png(labels, self.info.palette)), "image/png")
        if answer == "overlay":
            return Prediction(png_bytes(overlay(image, labels, self.info.palette)), "image/png")
        return Prediction(json.dumps(self.summary(labels)).encode(), "application/json")

    def remove_background(self, data: bytes, refine: str, class_name: str | None = None) -> Prediction:
        """The uploaded photo cut out as an RGBA PNG (``pixelseg remove-bg``'s output): the pixels of the
        foreground class (``class_name``, else :func:`~pixelseg.refiners.matting.foreground_class`'s rule)
        with the mask's edge refined by ``refine`` into an alpha matte."""
        from ..refiners.matting import REFINEMENTS, alpha_matte, foreground_class, rgba

        if self.task.name != "semantic":
            raise UploadRefused(400, f"background removal needs a semantic model; this one is {self.task.name}")
        if refine not in REFINEMENTS:
            raise UploadRefused(400, f"refine must be one of {', '.join(REFINEMENTS)}, not {refine!r}")
        try:
            foreground = foreground_class(self.info.classes, class_name)
        except PixelsegError as err:
            raise UploadRefused(400, str(err)) from None
        image = decode_upload(data, self.info.image_mode, self.max_pixels)
        mask = self.labels(image) == foreground
        photo = np.asarray(image.convert("RGB"))
        cutout = rgba(photo, alpha_matte(photo, mask, refine))
        return Prediction(png_bytes(Image.fromarray(cutout, "RGBA")), "image/png")

    def labels(self, image: Image.Image) -> np.ndarray:
        """Class indices ``(H, W)`` of a decoded image, as ``pixelseg predict`` computes them."""
        try:
            return self.predictor.labels(image)
        except PixelsegError as err:  # e.g. an image smaller than the network accepts
            raise UploadRefused(422, str(err)) from None

    def summary(self, labels: np.ndarray) -> dict[str, Any]:
        """Classes, per-class pixel counts and a COCO RLE mask (pycocotools' compressed string) per class
        present."""
        from pycocotools import mask as coco_mask

        height, width = labels.shape
        counts = np.bincount(labels.ravel(), minlength=len(self.info.classes))
        classes = []
        for index, name in enumerate(self.info.classes):
            entry: dict[str, Any] = {"index": index, "name": name, "pixels": int(counts[index]), "rle": None}
            if counts[index]:
                rle = coco_mask.encode(np.asfortranarray(labels == index, dtype=np.uint8))
                entry["rle"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            classes.append(entry)
        return {"model": self.model_dir.name, "task": "semantic", "width": int(width), "height": int(height),
                "classes": classes}

    def _detections(self, data: bytes, filename: str, answer: str) -> Prediction:
        """Instance and panoptic models: their task's own prediction files for the upload (the JSON that
        ``pixelseg predict`` writes, or its overlay)."""
        if answer == "label":
            raise UploadRefused(400, f"{self.task.name} models answer format=json or format=overlay, not label")
        decode_upload(data, "RGB", self.max_pixels)  # the limits and the reasons, before the predictor reads it
        name = Path(filename or "upload").name or "upload"
        if not Path(name).suffix:
            name += ".png"
        predictor = self.task.predictor(self.model, self.model_dir, self.info, self.options)
        with tempfile.TemporaryDirectory(prefix="pixelseg-serve-") as folder:
            upload, out_dir = Path(folder) / name, Path(folder) / "out"
            out_dir.mkdir()
            upload.write_bytes(data)
            try:
                written = predictor.predict_file(upload, out_dir)
                predictor.finish(out_dir)
            except PixelsegError as err:
                raise UploadRefused(422, str(err).replace(str(upload), name)) from None
            if answer == "overlay":
                return Prediction(written[0].read_bytes(), "image/png")
            return Prediction((out_dir / NATIVE_JSON[self.task.name]).read_bytes(), "application/json")
