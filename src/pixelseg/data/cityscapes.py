"""Cityscapes fine annotations (Cordts et al., CVPR 2016): 19 evaluation classes, the rest ignored.

``root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` pairs with
``root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``; the 34 label ids map to the 19
train ids of the official ``labels.py`` (every other id, and the license plate, → ``ignore_index``).
Splits ``train`` (2,975) and ``val`` (500); the test labels are withheld by the benchmark server, so there is
no labelled ``test`` split. :meth:`Cityscapes.load_instances` reads ``_gtFine_instanceIds.png``
(``label_id * 1000 + k`` for the objects of instance classes, the label id elsewhere) for panoptic work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import PixelsegError
from ..io.images import read_mask
from .folder import LabelledImages, lookup_table, relabel

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]
CITYSCAPES_PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32)]
# labelId → trainId of cityscapesScripts' labels.py; ids 0–33 not listed are ignored.
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_SPLITS = ("train", "val")
NUM_LABEL_IDS = 34


class Cityscapes(LabelledImages):
    """Cityscapes ``train``/``val`` with fine labels as 19 train ids."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in CITYSCAPES_SPLITS:
            raise PixelsegError(f"Cityscapes has the labelled splits {', '.join(CITYSCAPES_SPLITS)}, not "
                                f"'{split}' (the test labels are withheld by the benchmark server)")
        root = Path(root)
        images_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise PixelsegError("Cityscapes folder not found", folder)
        self.problems: list[str] = []
        samples = []
        for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if label.is_file():
                samples.append((image, label))
            elif strict:
                raise PixelsegError(f"image has no label {label.name}", image)
            else:
                self.problems.append(f"{image}: no label {label.name}")
        known = {image.name[: -len("_leftImg8bit.png")] for image, _ in samples}
        for label in sorted(labels_dir.glob("*/*_gtFine_labelIds.png")):
            if label.name[: -len("_gtFine_labelIds.png")] not in known and not strict:
                if not (images_dir / label.parent.name / label.name.replace("_gtFine_labelIds", "_leftImg8bit")).is_file():
                    self.problems.append(f"{label}: label without its image")
        if not samples and strict:
            raise PixelsegError("no *_leftImg8bit.png images", images_dir)
        super().__init__(samples, classes=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
                         ignore_index=ignore_index, transform=transform)
        self.table = lookup_table(LABEL_TO_TRAIN, NUM_LABEL_IDS, ignore_index)
        self.split = split

    def read_label(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        raw = read_mask(path)
        raw[raw == -1] = 0  # the license plate (-1) is ignored like "unlabeled"
        return relabel(raw, self.table, path)

    def load_instances(self, index: int) -> np.ndarray:
        """The instance ids of sample ``index`` (``label_id * 1000 + k`` on objects, the label id elsewhere)."""
        path = self.samples[index][1].with_name(
            self.samples[index][1].name.replace("_gtFine_labelIds", "_gtFine_instanceIds"))
        if not path.is_file():
            raise PixelsegError("Cityscapes instance ids not found", path)
        return read_mask(path)
