"""Image files: the suffixes pixelseg reads and the one reader every dataset and command uses.

An image is decoded in full when it is read, so a truncated file fails here, with its name, rather
than later inside a transform. Every failure (a missing file, an unknown format, a truncated file, a
decompression bomb, pixels the rules below refuse, any exception of the decoder) is a one-line
:class:`~pixelseg.errors.PixelsegError` naming the file, so a command looping over files reports the
bad one and goes on with the others.

The rules, the same for every reader (datasets, ``predict``, the streaming window readers):

- **Orientation.** Every file — image or mask — is read the way a viewer shows it: its EXIF
  orientation tag is applied (``ImageOps.exif_transpose``) and :func:`image_size` reports the size
  after it. A mask is transposed by its *own* tag: a mask saved with its photo's EXIF turns with the
  photo (both), a mask drawn on the displayed photo carries no tag and needs no turn (neither). A mask
  drawn on the raw, unturned pixels of a non-square photo then differs in size from the photo and the
  dataset refuses the pair; for a square photo that cannot be detected — strip the photo's tag.
- **Bit depth of images.** 16-bit samples keep their high byte (``x >> 8``), so 0–65535 spans
  0–255; Pillow does the same for 16-bit colour PNGs, so grey and colour agree. 32-bit integer images
  (mode ``I``) are taken as 16-bit data and must hold values in 0–65535. Float images (mode ``F``) must
  hold finite values in [0, 1], scaled by 255 and rounded; any other range is refused rather than
  guessed (rescale the file, or save it as 8 or 16 bits).
- **Colour modes of images.** Palette images (with or without transparency), CMYK, greyscale with
  alpha (``LA`` → ``L``), RGBA and the rest are converted to the requested mode by Pillow; alpha is
  dropped (the stored colour is kept), as Pillow and torchvision do.
- **Masks** (:func:`read_mask`) keep their values: a 16-bit label PNG keeps labels above 255, a
  palette PNG gives its indices, never colours; only the orientation rule applies.
- **Decompression bombs.** An image of more than :func:`max_image_pixels` pixels is refused before its
  pixels are decoded. The limit is ``PIXELSEG_MAX_IMAGE_PIXELS`` from the environment (``0`` or
  ``none``: no limit) when set, else :data:`MAX_IMAGE_PIXELS` (Pillow's own error threshold, ~179
  Mpx). A limit above Pillow's raises Pillow's ``Image.MAX_IMAGE_PIXELS`` to match, since Pillow
  checks first.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import PixelsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

MAX_IMAGE_PIXELS: int | None = 2 * 89_478_485  # Pillow's default error threshold (2 x Image.MAX_IMAGE_PIXELS)
MAX_PIXELS_ENV = "PIXELSEG_MAX_IMAGE_PIXELS"

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_MASK_LABEL_MODES = ("1", "L", "P", "I", *_SIXTEEN_BIT)  # one value per pixel, kept as is
_MASK_ALPHA_MODES = {"LA": "L", "La": "L", "PA": "P"}  # alpha dropped, the values kept


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def max_image_pixels() -> int | None:
    """The most pixels an image may have (``None``: no limit): ``$PIXELSEG_MAX_IMAGE_PIXELS`` when set,
    else :data:`MAX_IMAGE_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    if value.lower() in ("0", "none"):
        return None
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = -1
    if limit < 0:
        raise PixelsegError(f"{MAX_PIXELS_ENV} must be a number of pixels (0 or 'none': no limit), not {value!r}")
    return limit


def list_images(directory: str | Path) -> list[Path]:
    """The image files (any of :data:`IMAGE_SUFFIXES`, any case) directly in ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PixelsegError("directory not found", directory)
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _too_large(width: int, height: int, limit: int, what: str) -> str:
    return (f"{what} too large: {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(a decompression bomb?); {MAX_PIXELS_ENV} raises it")


@contextmanager
def open_image(path: str | Path, *, what: str = "image") -> Iterator[Image.Image]:
    """The file opened by Pillow (header only), checked against the pixel limit. Any error while the
    block runs — Pillow's, numpy's, a refused conversion — becomes a one-line ``PixelsegError``."""
    path = Path(path)
    if not path.is_file():
        raise PixelsegError(f"no such {what} file", path)
    limit = max_image_pixels()
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and (limit is None or limit > 2 * pillow):
        Image.MAX_IMAGE_PIXELS = None if limit is None else limit // 2 + 1  # Pillow refuses above twice its own
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if limit is not None and width * height > limit:
                    raise PixelsegError(_too_large(width, height, limit, what), path)
                yield image
    except PixelsegError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own (lower) limit
        raise PixelsegError(f"{what} too large ({_first_line(err)}); {MAX_PIXELS_ENV} raises the limit",
                            path) from None
    except Exception as err:  # Pillow and numpy raise many types for corrupt files
        raise PixelsegError(f"unreadable {what} ({_first_line(err)})", path) from None


def oriented(image: Image.Image) -> Image.Image:
    """``image`` decoded and turned by its EXIF orientation tag (a copy)."""
    image.load()
    turned = ImageOps.exif_transpose(image)
    return turned if turned is not None and turned is not image else image.copy()


def to_eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image as mode ``L`` by the module's rules (other modes
    are returned as they are). Raises ``ValueError`` for values the rules refuse."""
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"32-bit integer pixels in {values.min()}..{values.max()}, outside the 16-bit "
                             "range 0..65535 this reader scales")
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("float pixels that are NaN or infinite")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"float pixels in {values.min():g}..{values.max():g}; float images must lie in "
                             "[0, 1] (or save the file as 8 or 16 bits)")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), mode="L")
    return image


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` by the module's rules (16-bit and float scaled, palette transparency and
    alpha handled). Raises ``ValueError`` for what the rules refuse."""
    image = to_eight_bit(image)
    if image.mode == mode:
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for palette images with transparency
        if mode == "RGBA":
            return image
    return image.convert(mode)


def read_image(path: str | Path, mode: str | None = "RGB", *, what: str = "image") -> Image.Image:
    """Open and fully decode an image, turned by its EXIF orientation and converted to ``mode`` by the
    module's rules (``None`` keeps the file's own mode and values, e.g. ``P`` or ``I;16`` for label
    maps). ``what`` names the file's role in error messages."""
    with open_image(path, what=what) as image:
        image = oriented(image)
        return image if mode is None else to_mode(image, mode)


def read_mask(path: str | Path, *, what: str = "mask") -> np.ndarray:
    """A label file as a writable array: ``(H, W)`` integers for one-value-per-pixel files (palette
    indices, 8 and 16-bit values kept, float files only when they hold whole numbers; alpha dropped),
    ``(H, W, 3)`` uint8 for colour files. Turned by the file's own EXIF orientation, never rescaled."""
    with open_image(path, what=what) as image:
        image = oriented(image)
        mode = image.mode
        if mode in _MASK_ALPHA_MODES:
            image, mode = image.getchannel(0), _MASK_ALPHA_MODES[mode]
        if mode in _MASK_LABEL_MODES:
            return np.array(image).astype(np.int64)
        if mode == "F":
            values = np.asarray(image, dtype=np.float64)
            if not (np.isfinite(values).all() and np.array_equal(values, np.rint(values))):
                raise ValueError("a float label file must hold whole numbers (class indices)")
            return values.astype(np.int64)
        return np.array(image.convert("RGB"))


def image_size(path: str | Path, *, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` of an image as read (after its EXIF orientation), without decoding the pixels."""
    with open_image(path, what=what) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # the orientations that swap the axes
            width, height = height, width
        return width, height


def read_rgb(path: str | Path) -> np.ndarray:
    """An image as a writable ``(H, W, 3)`` uint8 array."""
    return np.array(read_image(path, "RGB"))


def image_to_tensor(array: np.ndarray) -> Tensor:
    """An ``(H, W, C)`` (or ``(H, W)``) uint8 array as a float ``(C, H, W)`` tensor in ``[0, 1]``."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)
