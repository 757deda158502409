"""PASCAL VOC 2012 segmentation (Everingham et al., IJCV 2010) and its SBD-augmented training list
(Hariharan et al., ICCV 2011), the FCN/DeepLab benchmark.

21 classes (background + 20 objects); the 255 "border/difficult" pixels of the VOC PNGs are ignored.
Splits come from the official lists: ``train`` (1,464) and ``val`` (1,449) in
``VOC2012/ImageSets/Segmentation/``; VOC's test labels were never released, so there is no ``test`` split.

``voc_aug``'s ``train`` split is ``train_aug`` — SBD's train + val and VOC train, minus VOC val (10,582
images with the full datasets) — and its ``val`` is VOC val. An image with a VOC PNG is read from it (the finer,
bordered annotation); the others from SBD's ``cls/<id>.mat`` (``GTcls.Segmentation``, read with
``scipy.io.loadmat``). SBD's ``inst/<id>.mat`` (``GTinst.Segmentation``: instance ids) is read by
:meth:`VOCAug.load_instances`.

Layout under ``root``: ``VOCdevkit/VOC2012/`` (or ``VOC2012/``) and, for ``voc_aug``,
``benchmark_RELEASE/dataset/`` (or ``SBD/``) with ``img/``, ``cls/``, ``inst/``, ``train.txt``, ``val.txt``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import PixelsegError
from .folder import LabelledImages, decode_mask

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
VOC_SPLITS = ("train", "val", "trainval")
VOC_AUG_SPLITS = ("train", "val")  # train: the train_aug list


def voc_palette(count: int = 256) -> list[tuple[int, int, int]]:
    """The VOC development kit's colour map (``labelcolormap``): the bits of the index spread over R, G, B."""
    colours = []
    for index in range(count):
        r = g = b = 0
        code = index
        for shift in range(7, -1, -1):
            r |= (code & 1) << shift
            g |= ((code >> 1) & 1) << shift
            b |= ((code >> 2) & 1) << shift
            code >>= 3
        colours.append((r, g, b))
    return colours


VOC_PALETTE = voc_palette(len(VOC_CLASSES))


def voc_dir(root: str | Path) -> Path:
    """``root/VOCdevkit/VOC2012`` or ``root/VOC2012`` or ``root`` itself (the first holding ``JPEGImages``)."""
    root = Path(root)
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise PixelsegError("no PASCAL VOC 2012 here (expected VOCdevkit/VOC2012/JPEGImages)", root)


def sbd_dir(root: str | Path) -> Path:
    """``root/benchmark_RELEASE/dataset`` or ``root/SBD`` or ``root`` (the first holding ``cls``)."""
    root = Path(root)
    for candidate in (root / "benchmark_RELEASE" / "dataset", root / "SBD", root / "sbd", root):
        if (candidate / "cls").is_dir():
            return candidate
    raise PixelsegError("no SBD here (expected benchmark_RELEASE/dataset/cls)", root)


def read_list(path: Path) -> list[str]:
    """The image ids of a split list, one per line."""
    if not path.is_file():
        raise PixelsegError("split list not found", path)
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_sbd_mat(path: Path, key: str = "GTcls") -> np.ndarray:
    """``<key>.Segmentation`` of an SBD ``.mat`` file as int64 (class ids for ``GTcls``, instance ids for
    ``GTinst``)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat[key].Segmentation).astype(np.int64)
    except FileNotFoundError:
        raise PixelsegError("SBD annotation not found", path) from None
    except Exception as err:  # scipy raises many types for corrupt files
        raise PixelsegError(f"cannot read the SBD annotation ({type(err).__name__}: {err})", path) from None


class VOC(LabelledImages):
    """VOC 2012 ``train``/``val``/``trainval`` from the official lists; 255 ignored."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in VOC_SPLITS:
            raise PixelsegError(f"PASCAL VOC 2012 has the splits {', '.join(VOC_SPLITS)}, not '{split}' "
                                "(its test labels were never released)")
        self.voc = voc_dir(root)
        self.problems: list[str] = []
        samples = []
        for name in read_list(self.voc / "ImageSets" / "Segmentation" / f"{split}.txt"):
            image = self.voc / "JPEGImages" / f"{name}.jpg"
            mask = self.voc / "SegmentationClass" / f"{name}.png"
            for path in (image, mask):
                if not path.is_file():
                    self._problem(f"{path}: missing (listed in {split}.txt)", strict)
            if image.is_file() and mask.is_file():
                samples.append((image, mask))
        super().__init__(samples, classes=VOC_CLASSES, palette=VOC_PALETTE, ignore_index=ignore_index,
                         transform=transform)
        self.split = split

    def _problem(self, line: str, strict: bool) -> None:
        if strict:
            raise PixelsegError(line)
        self.problems.append(line)

    def read_label(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        mask = decode_mask(path, self.palette, 255)  # P-mode PNGs: the indices are the classes
        if mask.ndim != 2:
            raise PixelsegError("a VOC label PNG holds class indices", path)
        mask[mask == 255] = self.ignore_index
        return mask


def train_aug_ids(voc: Path, sbd: Path) -> list[str]:
    """SBD train + SBD val + VOC train, minus VOC val: the ``train_aug`` list, sorted."""
    segmentation = voc / "ImageSets" / "Segmentation"
    ids = set(read_list(sbd / "train.txt")) | set(read_list(sbd / "val.txt")) | set(read_list(segmentation / "train.txt"))
    return sorted(ids - set(read_list(segmentation / "val.txt")))


class VOCAug(VOC):
    """VOC 2012 with SBD: ``train`` is ``train_aug`` (SBD train + val + VOC train − VOC val), ``val`` VOC's."""

    def __init__(self, root: str | Path, split: str = "train", *, ignore_index: int = 255,
                 transform: Callable | None = None, strict: bool = True) -> None:
        if split not in VOC_AUG_SPLITS:
            raise PixelsegError(f"voc_aug has the splits {', '.join(VOC_AUG_SPLITS)}, not '{split}'")
        if split == "val":
            super().__init__(root, split, ignore_index=ignore_index, transform=transform, strict=strict)
            self.sbd = None
            return
        self.voc, self.sbd = voc_dir(root), sbd_dir(root)
        self.problems = []
        samples = []
        for name in train_aug_ids(self.voc, self.sbd):
            image = self.voc / "JPEGImages" / f"{name}.jpg"
            if not image.is_file():
                image = self.sbd / "img" / f"{name}.jpg"
            mask = self.voc / "SegmentationClass" / f"{name}.png"
            if not mask.is_file():
                mask = self.sbd / "cls" / f"{name}.mat"
            for path in (image, mask):
                if not path.is_file():
                    self._problem(f"{path}: missing (listed in train_aug)", strict)
            if image.is_file() and mask.is_file():
                samples.append((image, mask))
        LabelledImages.__init__(self, samples, classes=VOC_CLASSES, palette=VOC_PALETTE,
                                ignore_index=ignore_index, transform=transform)
        self.split = split

    def read_label(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        if path.suffix == ".mat":
            mask = read_sbd_mat(path)
            mask[mask == 255] = self.ignore_index
            return mask
        return super().read_label(index)

    def load_instances(self, index: int) -> np.ndarray | None:
        """SBD's instance ids of sample ``index`` (0 = none) when SBD has them, else ``None``."""
        if self.sbd is None:
            return None
        path = self.sbd / "inst" / f"{self.samples[index][0].stem}.mat"
        return read_sbd_mat(path, "GTinst") if path.is_file() else None
