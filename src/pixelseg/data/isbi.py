"""ISBI 2012 EM segmentation challenge, training set (Arganda-Carreras et al., 2015).

30 slices of 512x512 serial-section EM; labels 0 = membrane, 255 = cell interior, read here as class 0
(membrane) and class 1 (cell). As in the pixelseg benchmark, slices 0–24 are the training split and
25–29 the validation split ("all" gives the 30).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import PixelsegError
from .folder import SegmentationFolder

ISBI_CLASSES = ["membrane", "cell"]
ISBI_SPLITS = {"train": range(0, 25), "val": range(25, 30), "all": range(0, 30)}


class ISBI2012(SegmentationFolder):
    """``root/image/<i>.png`` with ``root/label/<i>.png``; grayscale, two classes."""

    def __init__(self, root: str | Path, split: str = "train", *, transform: Callable | None = None,
                 ignore_index: int = 255) -> None:
        if split not in ISBI_SPLITS:
            raise PixelsegError(f"unknown ISBI 2012 split '{split}' (train, val or all)")
        root = Path(root)
        super().__init__(root / "image", root / "label", classes=ISBI_CLASSES,
                         palette=[(0, 0, 0), (255, 255, 255)], ignore_index=ignore_index,
                         image_mode="L", transform=transform, label_map={255: 1})
        keep = {str(i) for i in ISBI_SPLITS[split]}
        self.samples = sorted((s for s in self.samples if s[0].stem in keep), key=lambda s: int(s[0].stem))
        self.split = split
