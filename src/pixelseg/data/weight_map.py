"""U-Net's border weight map as per-pixel loss weights (Ronneberger, Fischer & Brox, "U-Net", MICCAI 2015,
arXiv:1505.04597, eq. 2):

    w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))

with ``d1``/``d2`` the distances to the border of the nearest and the second-nearest cell, ``w_c`` the
weight that balances the class frequencies and, as in the paper, ``w0 = 10`` and ``σ ≈ 5`` px. Cells are
the connected components of every label but ``background`` (the separating borders); the map is computed
for every pixel, as eq. 2 is written. A map is computed once per mask and cached — in memory, or as
``.npy`` files in a cache folder keyed by the mask file's path and modification time and the parameters —
and goes through the training transforms with the mask (nearest-neighbour resampling; crops, flips,
rotations and elastic warps move both alike). Pixels the transforms pad (``ignore_index`` in the mask)
weigh 0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .transforms import normalize, to_chw_uint8


def class_balance_weights(mask: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """``w_c``: each pixel weighs ``N / (K · n_c)`` for its class ``c`` (``n_c`` its pixels, ``K`` the
    classes present, ``N`` all counted pixels), so every present class carries the same total weight."""
    counted = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, dtype=bool)
    labels, counts = np.unique(mask[counted], return_counts=True)
    weights = np.zeros(mask.shape, dtype=np.float32)
    for label, count in zip(labels, counts, strict=True):
        weights[mask == label] = counted.sum() / (len(labels) * count)
    return weights


def border_weights(mask: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0, background: int = 0,
                   ignore_index: int | None = None) -> np.ndarray:
    """``w0 · exp(−(d1 + d2)² / (2σ²))`` of eq. 2 (0 where the mask has fewer than two cells)."""
    cells, count = ndimage.label((mask != background) & (mask != ignore_index if ignore_index is not None else True))
    if count < 2:
        return np.zeros(mask.shape, dtype=np.float32)
    nearest = np.full(mask.shape, np.inf, dtype=np.float32)
    second = np.full(mask.shape, np.inf, dtype=np.float32)
    for cell in range(1, count + 1):  # one distance transform per cell: a loop over cells, not pixels
        distance = ndimage.distance_transform_edt(cells != cell).astype(np.float32)
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    return (w0 * np.exp(-((nearest + second) ** 2) / (2 * sigma**2))).astype(np.float32)


def unet_weight_map(mask: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True,
                    background: int = 0, ignore_index: int | None = None) -> np.ndarray:
    """Eq. 2's ``w(x)`` of an integer mask ``(H, W)``; ``w_c = 1`` everywhere without ``class_balance``;
    0 on ``ignore_index`` pixels."""
    base = class_balance_weights(mask, ignore_index) if class_balance else np.ones(mask.shape, dtype=np.float32)
    weights = base + border_weights(mask, w0=w0, sigma=sigma, background=background, ignore_index=ignore_index)
    if ignore_index is not None:
        weights[mask == ignore_index] = 0.0
    return weights.astype(np.float32)


class WeightMapped(Dataset):
    """A 2D labelled dataset whose training samples carry U-Net's weight map: ``(image, mask, weights)``.

    ``dataset`` provides ``load(index)`` (the raw PIL image and int mask) and its ``transform`` (a
    ``JointTransform``), which is applied here to image, mask and weights together; ``options`` has
    ``w0``, ``sigma``, ``class_balance``, ``background`` and ``cache_dir``.
    """

    def __init__(self, dataset: Any, options: Any, ignore_index: int) -> None:
        self.dataset, self.options, self.ignore_index = dataset, options, ignore_index
        self.cache: dict[Any, np.ndarray] = {}
        self.computed = 0  # maps computed rather than read from a cache (for tests and logs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # classes, palette, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _parameters(self) -> str:
        o = self.options
        return f"w0={o.w0},sigma={o.sigma},balance={o.class_balance},background={o.background},ignore={self.ignore_index}"

    def _key(self, index: int) -> tuple[Any, Path | None]:
        samples = getattr(self.dataset, "samples", None)
        mask_path = samples[index][1] if isinstance(samples, list) and len(samples[index]) > 1 else None
        if mask_path is None:  # a generated dataset: the index names the mask
            return ("index", index), None
        path = Path(mask_path).resolve()
        stamp = path.stat().st_mtime_ns
        key = (str(path), stamp, index)  # one file may hold many masks (ISBI's stack)
        cache_dir = self.options.cache_dir
        if cache_dir is None:
            return key, None
        digest = hashlib.sha256(f"{path}|{stamp}|{index}|{self._parameters()}".encode()).hexdigest()[:32]
        return key, Path(cache_dir) / f"{path.stem}-{digest}.npy"

    def weights(self, index: int, mask: np.ndarray) -> np.ndarray:
        """The weight map of sample ``index`` (its raw mask ``mask``), from the cache when it is there."""
        key, file = self._key(index)
        if key in self.cache:
            return self.cache[key]
        if file is not None and file.is_file():
            weights = np.load(file, allow_pickle=False)
        else:
            o = self.options
            weights = unet_weight_map(mask, w0=o.w0, sigma=o.sigma, class_balance=o.class_balance,
                                      background=o.background, ignore_index=self.ignore_index)
            self.computed += 1
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                partial = file.with_suffix(".partial.npy")
                np.save(partial, weights, allow_pickle=False)
                partial.replace(file)
        self.cache[key] = weights
        return weights

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image, mask = self.dataset.load(index)
        weights = self.weights(index, mask)
        transform = self.dataset.transform
        image_t = tv_tensors.Image(to_chw_uint8(image))
        mask_t = tv_tensors.Mask(torch.as_tensor(np.asarray(mask), dtype=torch.int64))
        weight_t = tv_tensors.Mask(torch.from_numpy(np.array(weights, dtype=np.float32)))
        if transform is not None and transform.geometric is not None:
            image_t, mask_t, weight_t = transform.geometric(image_t, mask_t, weight_t)
        mean, std = (transform.mean, transform.std) if transform is not None else ([0.0], [1.0])
        pixels = normalize(image_t.as_subclass(Tensor).float() / 255.0, mean, std)
        labels = mask_t.as_subclass(Tensor).long()
        weight = weight_t.as_subclass(Tensor).float()
        weight = torch.where(labels == self.ignore_index, torch.zeros_like(weight), weight)
        return pixels, labels, weight
