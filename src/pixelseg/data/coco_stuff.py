"""COCO-Stuff 164k (Caesar et al., CVPR 2018): 80 thing and 91 stuff classes, 171 in all.

``root/images/{train2017,val2017}/*.jpg`` with ``root/stuffthingmaps_trainval2017/{train2017,val2017}/*.png``
(``root/annotations/...`` also works): the stuffthingmaps hold ``COCO category id − 1`` per pixel (0–181) and
255 for unlabelled pixels. Eleven thing ids are unused by COCO (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91),
so the 182 values map to 171 contiguous classes in id order. Splits ``train`` (118k) and ``val`` (5k);
test-dev labels are withheld, so there is no ``test`` split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import PixelsegError
from ..io.images import read_mask
from ..io.render import default_palette
from .folder import LabelledImages, lookup_table, pair_by_stem, relabel

COCO_THINGS = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"]
COCO_STUFF = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood"]
COCO_STUFF_CLASSES = COCO_THINGS + COCO_STUFF
COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
# stuffthingmaps value (category id − 1) → class index; the unused ids and 255 are ignored.
COCO_STUFF_IDS = [i for i in range(1, 183) if i not in COCO_UNUSED_IDS]
COCO_STUFF_SPLITS = {"train": "train2017", "val": "val2017"}


class CocoStuff(LabelledImages):
    """COCO-Stuff 164k ``train``/``val`` from the stuffthingmaps PNGs, 171 classes, 255 ignored."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in COCO_STUFF_SPLITS:
            raise PixelsegError(f"COCO-Stuff has the labelled splits {', '.join(COCO_STUFF_SPLITS)}, not "
                                f"'{split}' (test-dev labels are withheld)")
        root, folder = Path(root), COCO_STUFF_SPLITS[split]
        images_dir = root / "images" / folder
        labels_dir = next((d for d in (root / "stuffthingmaps_trainval2017" / folder, root / "annotations" / folder)
                           if d.is_dir()), root / "stuffthingmaps_trainval2017" / folder)
        for directory in (images_dir, labels_dir):
            if not directory.is_dir():
                raise PixelsegError("COCO-Stuff folder not found", directory)
        samples, self.problems = pair_by_stem(images_dir, labels_dir, ".jpg", ".png", strict=strict,
                                              label_word="stuffthingmap")
        super().__init__(samples, classes=COCO_STUFF_CLASSES, palette=default_palette(len(COCO_STUFF_CLASSES)),
                         ignore_index=ignore_index, transform=transform)
        mapping = {category - 1: index for index, category in enumerate(COCO_STUFF_IDS)}
        self.table = lookup_table(mapping, 256, ignore_index)
        self.table[[i - 1 for i in COCO_UNUSED_IDS]] = -1  # never in a valid map: refused, not ignored
        self.split = split

    def read_label(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        mask = relabel(read_mask(path), self.table, path)
        if (mask < 0).any():
            raise PixelsegError("the stuffthingmap holds an unused COCO category id", path)
        return mask
