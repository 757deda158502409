"""3D volumes for volumetric models (V-Net): a folder of ``.npy`` and multi-page ``.tif`` stacks (read by
:mod:`pixelseg.io.volumes`), a deterministic synthetic set, and the ISBI 2012 stack as one EM volume.

A sample is ``(image, label)`` with ``image`` a float32 tensor ``(C, D, H, W)`` and ``label`` an int64
tensor ``(D, H, W)``. Image files hold ``(D, H, W)`` (one channel) or ``(D, H, W, C)`` arrays (a
multi-page TIFF reads as ``(D, H, W)``: one page per slice); label files hold ``(D, H, W)`` integers.
Every problem with a file (unreadable, wrong number of dimensions, empty, NaN or infinite values, image and
label of different shapes, a missing partner) is a one-line ``PixelsegError`` naming the file — for
training and for prediction alike, never a silently wrong label. :func:`normalize_volume` states what a
constant volume becomes (zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import PixelsegError
from ..io.images import read_image
from ..io.render import default_palette
from ..io.volumes import VOLUME_SUFFIXES, check_finite, list_volume_files, read_volume

VolumeTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def image_volume(array: np.ndarray, path: str | Path) -> np.ndarray:
    """An image array as ``(C, D, H, W)`` float32; ``(D, H, W)`` gets one channel."""
    if array.ndim == 3:
        array = array[None]
    elif array.ndim == 4:
        array = np.moveaxis(array, -1, 0)
    else:
        raise PixelsegError(f"an image volume must be (D, H, W) or (D, H, W, C), not shape {array.shape}", path)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise PixelsegError(f"an image volume must be real numbers, not {array.dtype}", path)
    if array.size == 0:
        raise PixelsegError(f"the image volume is empty (shape {array.shape})", path)
    check_finite(array, path, "image volume")
    with np.errstate(over="ignore"):  # checked just below
        image = array.astype(np.float32)
    if not np.isfinite(image).all():
        raise PixelsegError(f"image volume values reach {np.abs(array).max():.3g}, beyond float32's range", path)
    return image


def label_volume(array: np.ndarray, path: str | Path) -> np.ndarray:
    """A label array as ``(D, H, W)`` int64; it must hold integers."""
    if array.ndim != 3:
        raise PixelsegError(f"a label volume must be (D, H, W), not shape {array.shape}", path)
    check_finite(array, path, "label volume")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise PixelsegError(f"a label volume must hold integer class indices, not {array.dtype} values", path)
    return array.astype(np.int64)


def normalize_volume(image: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per channel over the whole ``(C, D, H, W)`` volume (statistics in
    float64, result float32).

    A constant channel is only centred, so it becomes all zeros: its standard deviation is zero, or at
    most float32's resolution of its values (``eps * max |value|``, rounding noise that dividing would
    blow up into a random pattern).
    """
    values = image.astype(np.float64)
    mean = values.mean(axis=(1, 2, 3), keepdims=True)
    std = values.std(axis=(1, 2, 3), keepdims=True)
    resolution = np.finfo(np.float32).eps * np.abs(values).max(axis=(1, 2, 3), keepdims=True)
    return ((values - mean) / np.where(std > resolution, std, 1.0)).astype(np.float32)


class VolumeFolder(Dataset):
    """Volumes in ``images/`` with labels of the same stem in ``labels/`` (``.npy``, ``.tif``, ``.tiff``).

    ``normalize`` rescales each image volume to zero mean and unit variance. ``transform`` receives and
    returns ``(image, label)`` tensors. ``classes`` (names; they also set ``num_classes``) and ``palette``
    describe the labels for training and predictions.
    """

    def __init__(self, images: str | Path, labels: str | Path, *, num_classes: int | None = None,
                 normalize: bool = True, transform: VolumeTransform | None = None,
                 ignore_index: int = 255, classes: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None) -> None:
        self.classes = list(classes) if classes is not None else None
        if classes is not None:
            num_classes = len(classes)
        self.palette = ([tuple(c) for c in palette] if palette is not None
                        else default_palette(num_classes) if num_classes is not None else None)
        self.images_dir, self.labels_dir = Path(images), Path(labels)
        images_found = list_volume_files(self.images_dir)
        labels_by_stem = {p.stem: p for p in list_volume_files(self.labels_dir)}
        self.samples: list[tuple[Path, Path]] = []
        for image in images_found:
            if image.stem not in labels_by_stem:
                raise PixelsegError(f"no label volume named '{image.stem}.*' in {self.labels_dir}", image)
            self.samples.append((image, labels_by_stem[image.stem]))
        if not self.samples:
            raise PixelsegError(f"no volumes ({', '.join(VOLUME_SUFFIXES)}) found", self.images_dir)
        self.num_classes, self.normalize, self.transform = num_classes, normalize, transform
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = image_volume(read_volume(image_path), image_path)
        label = label_volume(read_volume(label_path), label_path)
        if image.shape[1:] != label.shape:
            raise PixelsegError(f"image volume {tuple(image.shape[1:])} and label volume {tuple(label.shape)} "
                                f"({label_path.name}) differ in shape", image_path)
        if self.num_classes is not None:
            bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
            if bad.any():
                raise PixelsegError(f"label values must lie in [0, {self.num_classes}) or be "
                                    f"{self.ignore_index}; found {int(label[bad][0])}", label_path)
        return (normalize_volume(image) if self.normalize else image), label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.load(index)
        sample = torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))
        return self.transform(*sample) if self.transform is not None else sample


def render_volume(seed: int, size: Sequence[int] = (32, 32, 32), max_objects: int = 4,
                  noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: balls (class 1) and axis-aligned cubes (class 2) of random size and brightness
    in Gaussian noise. Returns a float32 image ``(1, D, H, W)`` and an int64 label ``(D, H, W)``."""
    rng = np.random.default_rng(seed)
    depth, height, width = (int(s) for s in size)
    zs, ys, xs = np.mgrid[0:depth, 0:height, 0:width].astype(np.float32)
    label = np.zeros((depth, height, width), dtype=np.int64)
    image = np.zeros((depth, height, width), dtype=np.float32)
    smallest = min(depth, height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(1, 3))
        radius = rng.uniform(0.12, 0.25) * smallest
        centre = [rng.uniform(radius, s - radius) for s in (depth, height, width)]
        if kind == 1:
            inside = (zs - centre[0]) ** 2 + (ys - centre[1]) ** 2 + (xs - centre[2]) ** 2 <= radius**2
        else:
            half = radius * 0.85
            inside = ((np.abs(zs - centre[0]) <= half) & (np.abs(ys - centre[1]) <= half)
                      & (np.abs(xs - centre[2]) <= half))
        label[inside] = kind
        image[inside] = rng.uniform(0.8, 1.2) * (1.0 if kind == 1 else -1.0)  # balls bright, cubes dark
    image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return image[None], label


class SyntheticVolumes(Dataset):
    """``num_samples`` synthetic volumes (background, ball, cube); each a pure function of (seed, index)."""

    classes = ["background", "ball", "cube"]
    num_classes = 3
    in_channels = 1

    def __init__(self, num_samples: int = 16, *, size: Sequence[int] = (32, 32, 32), seed: int = 0,
                 noise: float = 0.6, transform: VolumeTransform | None = None) -> None:
        self.num_samples, self.size, self.seed, self.noise = num_samples, tuple(size), seed, noise
        self.transform = transform

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw sample, before ``transform``: image ``(1, D, H, W)`` and label ``(D, H, W)``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        return render_volume(self.seed * 1_000_003 + index, self.size, noise=self.noise)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.load(index)
        sample = torch.from_numpy(image), torch.from_numpy(label)
        return self.transform(*sample) if self.transform is not None else sample


def isbi2012_volume(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 30 ISBI 2012 slices (``root/image/<i>.png``, ``root/label/<i>.png``) stacked in section order
    into one serial-section EM volume: image ``(30, 512, 512)`` uint8, label ``(30, 512, 512)`` with
    0 = membrane, 1 = cell interior."""
    root = Path(root)
    images, labels = [], []
    for index in range(30):
        image_path, label_path = root / "image" / f"{index}.png", root / "label" / f"{index}.png"
        for path in (image_path, label_path):
            if not path.is_file():
                raise PixelsegError("ISBI 2012 slice not found", path)
        images.append(np.asarray(read_image(image_path, "L")))
        labels.append((np.asarray(read_image(label_path, "L", what="label")) > 127).astype(np.int64))
    return np.stack(images), np.stack(labels)


ISBI_VOLUME_SPLIT_COLUMN = 384  # columns 0..383 of every section train, 384..511 are held out


class ISBI2012Volume(Dataset):
    """The ISBI 2012 stack as one serial-section EM volume, split in space rather than by section:
    ``"train"`` is columns 0–383 of all 30 sections (30x512x384 voxels), ``"val"`` the held-out block of
    columns 384–511 (30x512x128), ``"all"`` the whole 30x512x512 volume. Each split is z-scored on its
    own; one sample per split (train on random patches of it: ``RandomVolumePatch`` and ``data.repeats``).
    """

    classes = ["membrane", "cell"]
    palette = [(0, 0, 0), (255, 255, 255)]
    num_classes = 2
    in_channels = 1
    splits = ("train", "val", "all")

    def __init__(self, root: str | Path, split: str = "train", *, transform: VolumeTransform | None = None) -> None:
        if split not in self.splits:
            raise PixelsegError(f"the ISBI 2012 volume has the splits {', '.join(self.splits)}, not '{split}'")
        image, label = isbi2012_volume(root)
        columns = {"train": slice(0, ISBI_VOLUME_SPLIT_COLUMN), "val": slice(ISBI_VOLUME_SPLIT_COLUMN, None),
                   "all": slice(None)}[split]
        self.image = np.ascontiguousarray(normalize_volume(image[None, ..., columns].astype(np.float32)))
        self.label = np.ascontiguousarray(label[..., columns])
        self.transform = transform

    def __len__(self) -> int:
        return 1

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The split's volume before ``transform``: image ``(1, D, H, W)`` z-scored, label ``(D, H, W)``."""
        if index != 0:
            raise IndexError(index)
        return self.image, self.label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.load(index)
        sample = torch.from_numpy(image), torch.from_numpy(label)
        return self.transform(*sample) if self.transform is not None else sample


class RandomVolumePatch:
    """Joint training augmentation for volumes ``(C, D, H, W)`` + labels ``(D, H, W)``: a random
    ``patch_size`` (D, H, W) crop (a volume smaller than the patch is padded: image with 0, labels with
    ``ignore_index``), random flips in the section plane (``hflip``: width, ``vflip``: height),
    ``rotate90`` quarter turns in the plane (square patches) and ``dflip`` along the depth. Randomness
    comes from torch's global generator, which the trainer seeds per epoch (exact resume)."""

    def __init__(self, patch_size: Sequence[int] | None = None, *, hflip: bool = True, vflip: bool = False,
                 rotate90: bool = False, dflip: bool = False, ignore_index: int = 255) -> None:
        if patch_size is not None and (len(patch_size) != 3 or min(patch_size) < 1):
            raise PixelsegError(f"data.patch_size must be three positive sizes [D, H, W], not {list(patch_size)}")
        if rotate90 and patch_size is not None and patch_size[1] != patch_size[2]:
            raise PixelsegError("data.rotate90 on volumes needs a square patch in the plane (H = W in "
                                f"data.patch_size), not {list(patch_size)}")
        self.patch_size = tuple(int(p) for p in patch_size) if patch_size is not None else None
        self.hflip, self.vflip, self.rotate90, self.dflip = hflip, vflip, rotate90, dflip
        self.ignore_index = ignore_index

    @staticmethod
    def _coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        if self.patch_size is not None:
            shortfall = [max(0, p - s) for p, s in zip(self.patch_size, label.shape, strict=True)]
            if any(shortfall):
                pads = (0, shortfall[2], 0, shortfall[1], 0, shortfall[0])
                image = torch.nn.functional.pad(image, pads)
                label = torch.nn.functional.pad(label, pads, value=self.ignore_index)
            starts = [int(torch.randint(0, s - p + 1, ())) for s, p in zip(label.shape, self.patch_size, strict=True)]
            box = tuple(slice(a, a + p) for a, p in zip(starts, self.patch_size, strict=True))
            image, label = image[(slice(None), *box)], label[box]
        if self.hflip and self._coin():
            image, label = image.flip(-1), label.flip(-1)
        if self.vflip and self._coin():
            image, label = image.flip(-2), label.flip(-2)
        if self.dflip and self._coin():
            image, label = image.flip(-3), label.flip(-3)
        if self.rotate90:
            turns = int(torch.randint(0, 4, ()))
            image, label = image.rot90(turns, (-2, -1)), label.rot90(turns, (-2, -1))
        return image.contiguous(), label.contiguous()
