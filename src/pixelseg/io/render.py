"""Palettes and pictures of predictions: class colours, index PNGs, overlays, instance drawings, and the
pieces of a report: legends, titled panels in a grid, and heatmaps."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, alpha: float = 0.5,
                   labels: Sequence[str] | None = None) -> Image.Image:
    """The RGB image ``(H, W, 3)`` with every boolean mask ``(N, H, W)`` blended in its own colour and its
    box ``(N, 4)`` (x1, y1, x2, y2) outlined; ``labels`` (e.g. ``"person 0.93"``) are written on the boxes."""
    canvas = image.astype(np.float32).copy()
    colours = instance_colours(len(masks))
    for mask, colour in zip(masks, colours, strict=True):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, dtype=np.float32)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for box, colour in zip(boxes, colours, strict=True):
        pen.rectangle([float(v) for v in box], outline=colour, width=1)
    if labels is not None:
        face = font(max(10, min(picture.size) // 24))
        for box, colour, text in zip(boxes, colours, labels, strict=True):
            x, y = float(box[0]), float(box[1])
            left, top, right, bottom = pen.textbbox((0, 0), text, font=face)
            y = y - (bottom - top) - 2 if y >= bottom - top + 2 else y + 1  # above the box if it fits
            pen.rectangle([x, y, x + right - left + 3, y + bottom - top + 2], fill=colour)
            pen.text((x + 1 - left, y + 1 - top), text, fill=_ink_on(colour), font=face)
    return picture


# ---- report pieces ---------------------------------------------------------------------------------------

def font(size: int = 14) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels (no font file needed)."""
    return ImageFont.load_default(size=size)


def _ink_on(colour: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour`` (by its luma)."""
    red, green, blue = colour[:3]
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def upscale(image: Image.Image, min_side: int) -> Image.Image:
    """``image`` enlarged by a whole factor (nearest neighbour, so labels stay crisp) until its shorter side
    is at least ``min_side``; larger images are returned as they are."""
    factor = -(-min_side // max(1, min(image.size)))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def legend(class_names: Sequence[str], palette: Palette, *, width: int | None = None, size: int = 16
           ) -> Image.Image:
    """Colour swatches with the class names, wrapped into rows no wider than ``width`` pixels."""
    face = font(size)
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(name, tuple(int(c) for c in palette[i][:3]) if i < len(palette) else (0, 0, 0),
                int(pen.textlength(name, font=face))) for i, name in enumerate(class_names)]
    pad, swatch = size // 2, size
    item_widths = [swatch + pad // 2 + text + 2 * pad for _, _, text in entries]
    width = width or sum(item_widths) + pad
    rows: list[list[int]] = [[]]
    used = pad
    for index, item in enumerate(item_widths):
        if rows[-1] and used + item > width:
            rows.append([])
            used = pad
        rows[-1].append(index)
        used += item
    line = swatch + pad
    picture = Image.new("RGB", (width, pad + line * len(rows)), "white")
    pen = ImageDraw.Draw(picture)
    for row, indices in enumerate(rows):
        x, y = pad, pad + row * line
        for index in indices:
            name, colour, _ = entries[index]
            pen.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(80, 80, 80))
            pen.text((x + swatch + pad // 2, y + swatch / 2), name, fill="black", font=face, anchor="lm")
            x += item_widths[index]
    return picture


def titled_row(panels: Sequence[Image.Image], titles: Sequence[str], *, caption: str | None = None,
               size: int = 16, gap: int = 6) -> Image.Image:
    """Panels side by side on white, each with its title above (no title row when all are empty); an
    optional caption on the left."""
    face = font(size)
    head = size + gap if any(titles) else gap
    cap = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=face)) + 2 * gap if caption else 0
    width = cap + sum(p.width for p in panels) + gap * (len(panels) + 1)
    height = head + max(p.height for p in panels) + gap
    picture = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(picture)
    if caption:
        pen.text((gap, head + (height - head) // 2), caption, fill="black", font=face, anchor="lm")
    x = cap + gap
    for panel, title in zip(panels, titles, strict=True):
        pen.text((x + panel.width // 2, gap // 2), title, fill="black", font=face, anchor="ma")
        picture.paste(panel.convert("RGB"), (x, head))
        x += panel.width + gap
    return picture


def stack(pictures: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """Pictures one below the other, left-aligned on white."""
    width = max(p.width for p in pictures)
    picture = Image.new("RGB", (width, sum(p.height for p in pictures) + gap * (len(pictures) - 1)), "white")
    y = 0
    for part in pictures:
        picture.paste(part.convert("RGB"), (0, y))
        y += part.height + gap
    return picture


def heatmap(values: np.ndarray, row_names: Sequence[str], column_names: Sequence[str], *,
            row_title: str = "ground truth", column_title: str = "prediction", cell: int = 56,
            size: int = 14) -> Image.Image:
    """A matrix of values in [0, 1] as white-to-blue cells with the value written in each, row names on the
    left and column names (rotated) on top."""
    values = np.asarray(values, dtype=np.float64)
    rows, columns = values.shape
    face = font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(int(measure.textlength(n, font=face)) for n in row_names) + size * 3
    top = max(int(measure.textlength(n, font=face)) for n in column_names) + size * 3
    picture = Image.new("RGB", (left + columns * cell + size, top + rows * cell + size), "white")
    pen = ImageDraw.Draw(picture)
    low, high = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])  # white → dark blue
    for i in range(rows):
        for j in range(columns):
            value = values[i, j]
            colour = (200, 200, 200) if np.isnan(value) else tuple(
                int(c) for c in (low + (high - low) * float(np.clip(value, 0, 1))).round())
            x, y = left + j * cell, top + i * cell
            pen.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(220, 220, 220))
            text = "—" if np.isnan(value) else f"{value:.2f}"
            pen.text((x + cell / 2, y + cell / 2), text, fill=_ink_on(colour), font=face, anchor="mm")
    for i, name in enumerate(row_names):
        pen.text((left - size // 2, top + i * cell + cell / 2), name, fill="black", font=face, anchor="rm")
    for j, name in enumerate(column_names):
        label = Image.new("RGB", (int(measure.textlength(name, font=face)) + 4, size + 6), "white")
        ImageDraw.Draw(label).text((2, 2), name, fill="black", font=face)
        label = label.rotate(90, expand=True)
        picture.paste(label, (left + j * cell + (cell - label.width) // 2, top - label.height - size // 2))
    vertical = Image.new("RGB", (int(measure.textlength(row_title, font=face)) + 4, size + 6), "white")
    ImageDraw.Draw(vertical).text((2, 2), row_title, fill=(90, 90, 90), font=face)
    vertical = vertical.rotate(90, expand=True)
    picture.paste(vertical, (2, max(top, top + (rows * cell - vertical.height) // 2)))
    pen.text((left + columns * cell / 2, 2), column_title, fill=(90, 90, 90), font=face, anchor="ma")
    return picture


def grid(pictures: Sequence[Image.Image], columns: int, gap: int = 6) -> Image.Image:
    """Equal-sized cells, ``columns`` to a row, on white (each picture at the top-left of its cell)."""
    columns = max(1, min(columns, len(pictures)))
    cell_w, cell_h = max(p.width for p in pictures), max(p.height for p in pictures)
    rows = -(-len(pictures) // columns)
    picture = Image.new("RGB", (columns * cell_w + (columns + 1) * gap, rows * cell_h + (rows + 1) * gap), "white")
    for index, part in enumerate(pictures):
        row, column = divmod(index, columns)
        picture.paste(part.convert("RGB"), (gap + column * (cell_w + gap), gap + row * (cell_h + gap)))
    return picture


def text_bar(text: str, width: int, size: int = 18) -> Image.Image:
    """One line of text on a white strip ``width`` pixels wide (a heading for a picture)."""
    picture = Image.new("RGB", (width, size + size // 2 + 4), "white")
    ImageDraw.Draw(picture).text((6, 4), text, fill="black", font=font(size))
    return picture
