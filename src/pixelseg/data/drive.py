"""DRIVE retinal vessel segmentation (Staal et al., IEEE TMI 2004): vessel vs background inside the FOV.

``root/{training,test}/images/<n>_{training,test}.tif`` (565x584 colour fundus photos), the first observer's
vessel masks ``1st_manual/<n>_manual1.gif`` and the field-of-view masks ``mask/<n>_{training,test}_mask.gif``.
Masks are 0/255; pixels outside the FOV are ``ignore_index`` (the benchmark scores inside the FOV only).
Splits: the official ``test`` set (images 01–20, labelled); the 20 training images (21–40) are split by
a fixed rule — ``train`` 21–36, ``val`` 37–40 — and ``trainval`` is all 20.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import PixelsegError
from ..io.images import read_image
from .folder import LabelledImages

DRIVE_CLASSES = ["background", "vessel"]
DRIVE_PALETTE = [(0, 0, 0), (255, 255, 255)]
DRIVE_SPLITS = {"train": range(21, 37), "val": range(37, 41), "trainval": range(21, 41), "test": range(1, 21)}


def binary_gif(path: Path) -> np.ndarray:
    """A 0/255 GIF (or any image) mask as bool, thresholded at 128 on its grey values."""
    return np.asarray(read_image(path, "L", what="mask")) >= 128


class Drive(LabelledImages):
    """DRIVE ``train``/``val``/``trainval``/``test``: background 0, vessel 1, outside the FOV ignored."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in DRIVE_SPLITS:
            raise PixelsegError(f"DRIVE has the splits {', '.join(DRIVE_SPLITS)}, not '{split}'")
        root = Path(root)
        root = root / "DRIVE" if (root / "DRIVE").is_dir() else root
        self.problems: list[str] = []
        samples, self.fov = [], []
        for number in DRIVE_SPLITS[split]:
            part = "test" if number <= 20 else "training"
            image = root / part / "images" / f"{number:02d}_{part}.tif"
            manual = root / part / "1st_manual" / f"{number:02d}_manual1.gif"
            fov = root / part / "mask" / f"{number:02d}_{part}_mask.gif"
            missing = [p for p in (image, manual, fov) if not p.is_file()]
            for path in missing:
                if strict:
                    raise PixelsegError("DRIVE file not found", path)
                self.problems.append(f"{path}: missing")
            if not missing:
                samples.append((image, manual))
                self.fov.append(fov)
        super().__init__(samples, classes=DRIVE_CLASSES, palette=DRIVE_PALETTE, ignore_index=ignore_index,
                         transform=transform)
        self.split = split

    def read_label(self, index: int) -> np.ndarray:
        vessels, fov = binary_gif(self.samples[index][1]), binary_gif(self.fov[index])
        if vessels.shape != fov.shape:
            raise PixelsegError(f"FOV mask is {fov.shape[1]}x{fov.shape[0]} but the vessel mask is "
                                f"{vessels.shape[1]}x{vessels.shape[0]}", self.fov[index])
        return np.where(fov, vessels.astype(np.int64), self.ignore_index)
