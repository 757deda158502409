"""Medical volumes in NIfTI (``.nii``, ``.nii.gz``, read with nibabel) and MetaImage (``.mhd`` + ``.raw``,
read with SimpleITK), for PROMISE12-style prostate MRI (Litjens et al., MedIA 2014) and the Medical
Segmentation Decathlon layout. Both readers are optional (``pip install 'pixelseg[medical]'``).

Two layouts under ``root`` are recognised (searched recursively):

- PROMISE12: ``CaseNN.mhd`` with ``CaseNN_segmentation.mhd`` beside it (any of the suffixes above);
- Decathlon: ``imagesTr/<case>.nii.gz`` with ``labelsTr/<case>.nii.gz``.

Arrays come as ``(D, H, W)`` = (z, y, x), the order SimpleITK returns; nibabel's (x, y, z[, c]) is
transposed to match. Multi-modal images (a 4th axis) become channels. Images are z-scored per channel.
Only the cases with labels are read (PROMISE12's and the Decathlon's test cases have none, so there is no
``test`` split); the fixed split rule, in case-name order: every fifth case (4th, 9th, …) validates, the
rest train; ``all`` is every labelled case.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import PixelsegError
from ..io.render import default_palette
from .volumes import VolumeTransform, image_volume, label_volume, normalize_volume

MEDICAL_SUFFIXES = (".nii.gz", ".nii", ".mhd")
PROMISE12_CLASSES = ["background", "prostate"]
MEDICAL_SPLITS = ("train", "val", "all")
LABEL_SUFFIX = "_segmentation"


def volume_stem(path: Path) -> str | None:
    """The case name of a medical volume file (``Case01`` of ``Case01.nii.gz``), ``None`` for other files."""
    name = path.name
    for suffix in MEDICAL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_medical_volume(path: str | Path) -> np.ndarray:
    """A NIfTI or MetaImage volume as a ``(D, H, W)`` or ``(D, H, W, C)`` array in (z, y, x) order."""
    path = Path(path)
    if not path.is_file():
        raise PixelsegError("volume file not found", path)
    if path.name.lower().endswith(".mhd"):
        try:
            import SimpleITK as sitk
        except ImportError:
            raise PixelsegError("reading MetaImage (.mhd) volumes needs SimpleITK "
                                "(pip install 'pixelseg[medical]')", path) from None
        try:
            return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError as err:
            first = (str(err).strip().splitlines() or ["unreadable"])[0]
            raise PixelsegError(f"cannot read the MetaImage volume ({first[:200]})", path) from None
    try:
        import nibabel
    except ImportError:
        raise PixelsegError("reading NIfTI (.nii, .nii.gz) volumes needs nibabel "
                            "(pip install 'pixelseg[medical]')", path) from None
    try:
        array = np.asanyarray(nibabel.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise PixelsegError(f"cannot read the NIfTI volume ({type(err).__name__}: {err})", path) from None
    if array.ndim < 3:
        raise PixelsegError(f"a volume has 3 or 4 axes, not shape {array.shape}", path)
    return np.ascontiguousarray(np.swapaxes(array, 0, 2))  # (x, y, z[, c]) → (z, y, x[, c])


def find_cases(root: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """The (image, label) files under ``root`` in case-name order, and one line per image without a label."""
    if not root.is_dir():
        raise PixelsegError("volume folder not found", root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and volume_stem(p) is not None
                   and not p.name.startswith("._"))  # macOS resource forks in the Decathlon tars
    pairs, problems = [], []
    for path in files:
        stem = volume_stem(path)
        if stem.endswith(LABEL_SUFFIX) or path.parent.name.startswith("labels"):
            continue
        if path.parent.name.startswith("imagesT"):
            label = path.parent.parent / path.parent.name.replace("images", "labels", 1) / path.name
            if path.parent.name == "imagesTs":
                continue  # the Decathlon's test cases: unlabelled
        else:
            label = path.with_name(path.name.replace(stem, stem + LABEL_SUFFIX, 1))
        if label.is_file():
            pairs.append((path, label))
        else:
            problems.append(f"{path}: no label volume {label.name}")
    pairs.sort(key=lambda pair: volume_stem(pair[0]))
    return pairs, problems


class MedicalVolumes(Dataset):
    """Labelled NIfTI / MetaImage cases under ``root``, split by the fixed rule of the module docstring.

    A sample is ``(image, label)``: float32 ``(C, D, H, W)`` z-scored per channel and int64 ``(D, H, W)``.
    """

    def __init__(self, root: str | Path, split: str = "train", *, classes: Sequence[str] = PROMISE12_CLASSES,
                 palette: Sequence[Sequence[int]] | None = None, ignore_index: int = 255,
                 transform: VolumeTransform | None = None, strict: bool = True) -> None:
        if split not in MEDICAL_SPLITS:
            raise PixelsegError(f"medical volumes have the splits {', '.join(MEDICAL_SPLITS)}, not '{split}' "
                                "(test cases come without labels)")
        pairs, self.problems = find_cases(Path(root))
        if strict and self.problems:
            raise PixelsegError(self.problems[0])
        if not pairs and strict:
            raise PixelsegError(f"no labelled volumes ({', '.join(MEDICAL_SUFFIXES)}) found", root)
        if split != "all":
            pairs = [pair for index, pair in enumerate(pairs) if (index % 5 == 4) == (split == "val")]
        self.samples = pairs
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.palette = [tuple(c) for c in palette] if palette is not None else default_palette(self.num_classes)
        self.ignore_index, self.transform, self.split = ignore_index, transform, split

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The case before ``transform``: image ``(C, D, H, W)`` z-scored, label ``(D, H, W)``, checked."""
        image_path, label_path = self.samples[index]
        image = image_volume(read_medical_volume(image_path), image_path)
        label = label_volume(read_medical_volume(label_path), label_path)
        if image.shape[1:] != label.shape:
            raise PixelsegError(f"image volume {tuple(image.shape[1:])} and label volume {tuple(label.shape)} "
                                f"({label_path.name}) differ in shape", image_path)
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            raise PixelsegError(f"label values must lie in [0, {self.num_classes}) or be {self.ignore_index}; "
                                f"found {int(label[bad][0])}", label_path)
        return normalize_volume(image), label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.load(index)
        sample = torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))
        return self.transform(*sample) if self.transform is not None else sample
