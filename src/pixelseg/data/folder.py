"""Image/mask pairs from two folders, paired by file stem.

Masks are index PNGs (one class index per pixel: ``L``, ``P``, 16-bit values kept as they are) or RGB
colour PNGs decoded with a palette; images and masks are both turned by their own EXIF orientation (see
:mod:`pixelseg.io.images` for the rules, and for how 16-bit and float images are scaled). Every problem with a file — a missing folder, an image without a mask, an unreadable or
truncated file, a mask whose size differs from its image, a label outside ``[0, num_classes)`` that is
not ``ignore_index`` — is a one-line ``PixelsegError`` naming the file.
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


class SegmentationFolder(Dataset):
    """``images_dir/<stem>.<ext>`` paired with ``masks_dir/<stem>.png`` (any image suffix)."""

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, *, num_classes: int | None = None,
                 classes: Sequence[str] | None = None, palette: Palette | None = None,
                 ignore_index: int = 255, image_mode: str = "RGB",
                 transform: Callable | None = None, label_map: dict[int, int] | None = None) -> None:
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        images = list_images(self.images_dir)
        masks = {p.stem: p for p in list_images(self.masks_dir)}
        if not images:
            raise PixelsegError("no images found", self.images_dir)
        for image in images:
            if image.stem not in masks:
                raise PixelsegError(f"image has no mask in {self.masks_dir}", image)
        self.samples = [(image, masks[image.stem]) for image in images]
        if classes is None and num_classes is None:
            raise ValueError("give classes or num_classes")
        self.classes = list(classes) if classes is not None else [f"class_{i}" for i in range(num_classes)]
        self.num_classes = len(self.classes)
        self.palette = [tuple(c) for c in palette] if palette is not None else default_palette(self.num_classes)
        self.ignore_index = ignore_index
        self.image_mode = image_mode
        self.transform = transform
        self.label_map = label_map or {}

    @property
    def in_channels(self) -> int:
        return len(self.image_mode)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The raw pair: a PIL image and an int64 mask of class indices, checked."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.image_mode)
        mask = decode_mask(mask_path, self.palette, self.ignore_index)
        for source, target in self.label_map.items():
            mask[mask == source] = target
        if mask.shape != (image.height, image.width):
            raise PixelsegError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                f"{image.width}x{image.height}", mask_path)
        bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            raise PixelsegError(f"label {int(mask[bad][0])} outside [0, {self.num_classes}) and not the "
                                f"ignore index {self.ignore_index}", mask_path)
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask
