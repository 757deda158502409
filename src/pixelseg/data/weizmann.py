"""Weizmann Horse database (Borenstein & Ullman, ECCV 2002): figure-ground masks of 328 horse photos.

``root/rgb/horseNNN.jpg`` colour photos with ``root/figure_ground/horseNNN.jpg`` masks (8-bit JPEG: the
edges carry compression noise, so a mask is thresholded at 128; 255 = horse). A mask has the size of the
``gray/`` photo, not of the ``rgb/`` one (stored at another scale, same aspect ratio): the colour photo is
resized (bilinear) to the mask. There is no official split; pixelseg's fixed rule, in name order:
``train`` horse001–200, ``val`` horse201–228, ``test`` horse229–328 (the last 100).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PixelsegError
from ..io.images import image_size, read_image, read_mask
from .folder import LabelledImages, pair_by_stem

WEIZMANN_CLASSES = ["background", "horse"]
WEIZMANN_PALETTE = [(0, 0, 0), (255, 255, 255)]
WEIZMANN_SPLITS = {"train": (0, 200), "val": (200, 228), "test": (228, 328), "all": (0, 328)}


class WeizmannHorse(LabelledImages):
    """The horses, split by name order (see the module docstring); masks thresholded at 128."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in WEIZMANN_SPLITS:
            raise PixelsegError(f"weizmann_horse has the splits {', '.join(WEIZMANN_SPLITS)}, not '{split}'")
        root = Path(root)
        images_dir, masks_dir = root / "rgb", root / "figure_ground"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise PixelsegError("Weizmann horse folder not found", folder)
        pairs, self.problems = pair_by_stem(images_dir, masks_dir, ".jpg", ".jpg", strict=strict, image_word="photo",
                                            label_word="mask")
        start, stop = WEIZMANN_SPLITS[split]
        super().__init__(pairs[start:stop], classes=WEIZMANN_CLASSES, palette=WEIZMANN_PALETTE,
                         ignore_index=ignore_index, transform=transform)
        self.split = split

    def read_sample_image(self, index: int) -> Image.Image:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.image_mode)
        size = image_size(mask_path, what="mask")
        return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)

    def read_label(self, index: int) -> np.ndarray:
        mask = read_mask(self.samples[index][1])
        if mask.ndim == 3:
            mask = mask.mean(axis=-1)
        return (mask >= 128).astype(np.int64)
