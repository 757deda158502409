"""CamVid, the SegNet benchmark version (Brostow et al., 2008; split of Badrinarayanan et al.).

11 classes; index 11 ("void") is mapped to ``ignore_index``. Splits: train 367, val 101, test 233
frames of 480x360, with label maps in ``<split>annot/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import PixelsegError
from .folder import SegmentationFolder

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist"]
CAMVID_PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
CAMVID_SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}


class CamVid(SegmentationFolder):
    """``root/<split>/*.png`` with ``root/<split>annot/*.png`` label maps (values 0–11, 11 = void)."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None) -> None:
        if split not in CAMVID_SPLIT_SIZES:
            raise PixelsegError(f"unknown CamVid split '{split}' (train, val or test)")
        root = Path(root)
        super().__init__(root / split, root / f"{split}annot", classes=CAMVID_CLASSES, palette=CAMVID_PALETTE,
                         ignore_index=ignore_index, transform=transform, label_map={11: ignore_index})
        self.split = split
