"""Image/mask pairs: the shared base of every 2D reader (:class:`LabelledImages`) and the folder reader.

Masks are index PNGs (one class index per pixel: ``L``, ``P``, 16-bit values kept as they are) or RGB
colour PNGs decoded with a palette; images and masks are both turned by their own EXIF orientation (see
:mod:`pixelseg.io.images` for the rules, and for how 16-bit and float images are scaled). Every problem with a
file — a missing folder, an image without a mask, an unreadable or truncated file, a mask whose size differs
from its image, a label outside ``[0, num_classes)`` that is not ``ignore_index`` — is a one-line
``PixelsegError`` naming the file.

A folder without masks (``masks_dir=None``) is a prediction-only set: its samples are images alone, and
anything that needs labels (training, evaluation, class statistics) refuses it in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import PixelsegError
from ..io.images import list_images, read_image, read_mask
from ..io.render import Palette, default_palette


def decode_mask(path: Path, palette: Palette | None, ignore_index: int) -> np.ndarray:
    """Read a mask as an int64 array of class indices (colour masks through the palette)."""
    array = read_mask(path)
    if array.ndim == 2:
        return array
    if palette is None:
        raise PixelsegError("colour mask but the dataset has no palette to decode it", path)
    codes = (array[..., 0].astype(np.int64) << 16) | (array[..., 1].astype(np.int64) << 8) | array[..., 2]
    lookup = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in enumerate(palette)}
    keys = np.array(list(lookup), dtype=np.int64)
    values = np.array(list(lookup.values()), dtype=np.int64)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    position = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    found = keys[position] == codes
    if not found.all():
        r, g, b = array[~found][0][:3]
        raise PixelsegError(f"colour ({r}, {g}, {b}) is not in the palette", path)
    return values[position]


def lookup_table(mapping: dict[int, int], size: int, default: int) -> np.ndarray:
    """An int64 table of ``size`` entries: ``table[raw] = mapping.get(raw, default)``, to relabel by indexing."""
    table = np.full(size, default, dtype=np.int64)
    for source, target in mapping.items():
        table[source] = target
    return table


def relabel(raw: np.ndarray, table: np.ndarray, path: Path) -> np.ndarray:
    """``table[raw]``; a raw value the table does not cover is refused, naming the file."""
    bad = (raw < 0) | (raw >= len(table))
    if bad.any():
        raise PixelsegError(f"label value {int(raw[bad][0])} is not one of the dataset's {len(table)} raw "
                            "label values", path)
    return table[raw]


def pair_by_stem(images_dir: Path, labels_dir: Path, image_suffix: str, label_suffix: str, *, strict: bool,
                 image_word: str = "image", label_word: str = "annotation") -> tuple[list[tuple[Path, Path]], list[str]]:
    """Images of ``images_dir`` paired with the labels of ``labels_dir`` of the same stem, in name order, and one
    line per problem (an image without its label, a label without its image). ``strict``: an image without its
    label is an error naming it instead."""
    labels = {p.stem: p for p in labels_dir.glob(f"*{label_suffix}")}
    pairs: list[tuple[Path, Path]] = []
    problems: list[str] = []
    for image in sorted(images_dir.glob(f"*{image_suffix}")):
        if image.stem in labels:
            pairs.append((image, labels.pop(image.stem)))
        elif strict:
            raise PixelsegError(f"{image_word} has no {label_word} in {labels_dir}", image)
        else:
            problems.append(f"{image}: no {label_word} {image.stem}{label_suffix}")
    problems += [f"{label}: {label_word} without its {image_word}" for label in sorted(labels.values())]
    return pairs, problems


class LabelledImages(Dataset):
    """A list of ``(image, mask or None)`` files with the dataset's classes, palette and ignore rule.

    Readers fill :attr:`samples` and override :meth:`read_label` (the raw file → class indices, with
    ``ignore_index`` where the benchmark ignores pixels) and, when they must, :meth:`read_sample_image`.
    ``load`` checks what every reader must guarantee: mask size equals image size, labels in range.
    """

    def __init__(self, samples: Sequence[tuple[Path, Path | None]], *, classes: Sequence[str],
                 palette: Palette | None = None, ignore_index: int = 255, image_mode: str = "RGB",
                 transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.palette = [tuple(c) for c in palette] if palette is not None else default_palette(self.num_classes)
        self.ignore_index = ignore_index
        self.image_mode = image_mode
        self.transform = transform

    @property
    def in_channels(self) -> int:
        return len(self.image_mode)

    @property
    def has_masks(self) -> bool:
        """Whether every sample has a mask (``False``: a prediction-only set)."""
        return all(mask is not None for _, mask in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def read_label(self, index: int) -> np.ndarray:
        """The mask of sample ``index`` as int64 class indices (``ignore_index`` where ignored)."""
        return decode_mask(self.samples[index][1], self.palette, self.ignore_index)

    def read_sample_image(self, index: int) -> Image.Image:
        return read_image(self.samples[index][0], self.image_mode)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The raw pair: a PIL image and an int64 mask of class indices, checked."""
        image_path, mask_path = self.samples[index]
        if mask_path is None:
            raise PixelsegError("this image set has no masks (prediction only): training, evaluation and "
                                "class statistics need a mask for every image", image_path)
        image = self.read_sample_image(index)
        mask = self.read_label(index)
        if mask.shape != (image.height, image.width):
            raise PixelsegError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                f"{image.width}x{image.height}", mask_path)
        bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            raise PixelsegError(f"label {int(mask[bad][0])} outside [0, {self.num_classes}) and not the "
                                f"ignore index {self.ignore_index}", mask_path)
        return image, mask

    def load_image(self, index: int) -> Image.Image:
        """The image of sample ``index`` alone (prediction-only sets have nothing else)."""
        return self.read_sample_image(index)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


class SegmentationFolder(LabelledImages):
    """``images_dir/<stem>.<ext>`` paired with ``masks_dir/<stem>.png`` (any image suffix); with
    ``masks_dir=None`` a prediction-only set of the images alone."""

    def __init__(self, images_dir: str | Path, masks_dir: str | Path | None, *, num_classes: int | None = None,
                 classes: Sequence[str] | None = None, palette: Palette | None = None,
                 ignore_index: int = 255, image_mode: str = "RGB",
                 transform: Callable | None = None, label_map: dict[int, int] | None = None) -> None:
        self.images_dir = Path(images_dir)
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        images = list_images(self.images_dir)
        if not images:
            raise PixelsegError("no images found", self.images_dir)
        samples: list[tuple[Path, Path | None]] = [(image, None) for image in images]
        if self.masks_dir is not None:
            masks = {p.stem: p for p in list_images(self.masks_dir)}
            for image in images:
                if image.stem not in masks:
                    raise PixelsegError(f"image has no mask in {self.masks_dir}", image)
            samples = [(image, masks[image.stem]) for image in images]
        if classes is None and num_classes is None:
            raise ValueError("give classes or num_classes")
        super().__init__(samples, classes=classes if classes is not None else
                         [f"class_{i}" for i in range(num_classes)], palette=palette,
                         ignore_index=ignore_index, image_mode=image_mode, transform=transform)
        self.label_map = label_map or {}

    def read_label(self, index: int) -> np.ndarray:
        mask = super().read_label(index)
        for source, target in self.label_map.items():
            mask[mask == source] = target
        return mask
