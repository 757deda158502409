"""Palettes and pictures of predictions: class colours, index PNGs, overlays and instance drawings."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..errors import PixelsegError

Palette = Sequence[Sequence[int]]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved), distinct colours for any number of classes."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        label = index
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette.append((r, g, b))
    return palette


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """Class indices ``(H, W)`` as RGB ``(H, W, 3)`` uint8; indices past the palette (or outside 0..255,
    or negative) are black."""
    labels = np.asarray(labels)
    table = np.zeros((257, 3), dtype=np.uint8)  # the last row: black, for every index outside 0..255
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    table[: len(colours)] = colours
    return table[np.where((labels >= 0) & (labels < 256), labels, 256)]


def overlay(image: Image.Image, labels: np.ndarray, palette: Palette, alpha: float = 0.5) -> Image.Image:
    """The image with the class colours blended in at ``alpha``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = colorize(labels, palette).astype(np.float32)
    return Image.fromarray((rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def index_png(labels: np.ndarray, palette: Palette) -> Image.Image:
    """A palette ('P' mode) image: pixel values are class indices (0..255; others are refused rather than
    wrapped around), viewers show the class colours."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise PixelsegError(f"a palette PNG holds class indices 0..255, not {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [int(channel) for colour in palette for channel in colour][: 256 * 3]
    image.putpalette(flat + [0] * (256 * 3 - len(flat)))
    return image


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG, ready for an atomic write."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def instance_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours: hues spaced by the golden ratio, so neighbours in the list differ."""
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colours.append((int(red * 255), int(green * 255), int(blue * 255)))
    return colours


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The RGB image ``(H, W, 3)`` with every boolean mask ``(N, H, W)`` blended in its own colour and its
    box ``(N, 4)`` (x1, y1, x2, y2) outlined."""
    canvas = image.astype(np.float32).copy()
    colours = instance_colours(len(masks))
    for mask, colour in zip(masks, colours, strict=True):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, dtype=np.float32)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for box, colour in zip(boxes, colours, strict=True):
        pen.rectangle([float(v) for v in box], outline=colour, width=1)
    return picture
