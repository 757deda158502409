"""ADE20K SceneParsing, the MIT Scene Parsing Benchmark (Zhou et al., CVPR 2017): 150 classes.

``root/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg`` with ``annotations/.../ADE_*.png``
(``root`` may also be ``ADEChallengeData2016`` itself). Label 0 ("other objects") is ignored and labels
1–150 are shifted by −1 to class indices 0–149 (``objectInfo150``). Splits: ``train`` (20,210) and ``val``
(2,000); the challenge's test images have no public labels, so there is no ``test`` split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import PixelsegError
from ..io.images import read_mask
from .folder import LabelledImages, pair_by_stem

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag"]
# The benchmark's colour150 map, as 6-digit hex per class.
_ADE20K_HEX = (
    "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d 787846 08ff33 "
    "ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff "
    "08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff "
    "eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff "
    "0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad "
    "0a00ff adff00 00ff99 ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 "
    "00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00 08b8aa "
    "8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 "
    "ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 00ccff 1400ff ffff00 0099ff 0029ff "
    "00ffcc 2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff")
ADE20K_PALETTE = [(int(h[:2], 16), int(h[2:4], 16), int(h[4:], 16)) for h in _ADE20K_HEX.split()]
ADE20K_SPLITS = {"train": "training", "val": "validation"}


def ade20k_dir(root: str | Path) -> Path:
    root = Path(root)
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


class ADE20K(LabelledImages):
    """ADE20K SceneParsing ``train``/``val``: 150 classes, raw 0 ignored, the rest shifted by −1."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in ADE20K_SPLITS:
            raise PixelsegError(f"ADE20K SceneParsing has the labelled splits {', '.join(ADE20K_SPLITS)}, not "
                                f"'{split}' (the challenge's test labels are not public)")
        base = ade20k_dir(root)
        images_dir = base / "images" / ADE20K_SPLITS[split]
        labels_dir = base / "annotations" / ADE20K_SPLITS[split]
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise PixelsegError("ADE20K folder not found", folder)
        samples, self.problems = pair_by_stem(images_dir, labels_dir, ".jpg", ".png", strict=strict)
        super().__init__(samples, classes=ADE20K_CLASSES, palette=ADE20K_PALETTE, ignore_index=ignore_index,
                         transform=transform)
        self.split = split

    def read_label(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        raw = read_mask(path)
        if raw.ndim != 2:
            raise PixelsegError("an ADE20K annotation holds class indices", path)
        return np.where(raw == 0, self.ignore_index, raw - 1)
