"""Image files: the suffixes pixelseg reads and the one reader every dataset and command uses.

An image is decoded in full when it is read, so a truncated file fails here, with its name, rather
than later inside a transform. Every failure (a missing file, an unknown format, a truncated file,
a decompression bomb) is a one-line :class:`~pixelseg.errors.PixelsegError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import PixelsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# What Pillow raises for a bad file. DecompressionBombError derives from neither OSError nor ValueError.
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def list_images(directory: str | Path) -> list[Path]:
    """The image files (any of :data:`IMAGE_SUFFIXES`, any case) directly in ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PixelsegError("directory not found", directory)
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: str | Path, mode: str | None = "RGB", *, what: str = "image") -> Image.Image:
    """Open and fully decode an image, converted to ``mode`` (``None`` keeps the file's own mode, e.g.
    ``P`` or ``I;16`` for label maps). ``what`` names the file's role in error messages."""
    path = Path(path)
    if not path.is_file():
        raise PixelsegError(f"no such {what} file", path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode is not None and image.mode != mode else image.copy()
    except _READ_ERRORS as err:
        raise PixelsegError(f"unreadable {what} ({_first_line(err)})", path) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except _READ_ERRORS as err:
        raise PixelsegError(f"unreadable image ({_first_line(err)})", path) from None


def read_rgb(path: str | Path) -> np.ndarray:
    """An image as a writable ``(H, W, 3)`` uint8 array."""
    return np.array(read_image(path, "RGB"))


def image_to_tensor(array: np.ndarray) -> Tensor:
    """An ``(H, W, C)`` (or ``(H, W)``) uint8 array as a float ``(C, H, W)`` tensor in ``[0, 1]``."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)
