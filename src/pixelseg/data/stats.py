"""Class frequencies of a dataset and the class weights of weighted cross-entropy.

- Median-frequency balancing (Eigen & Fergus, ICCV 2015, arXiv:1411.4734, Sec. 4.1; used by SegNet):
  ``w_c = median_k f_k / f_c`` with ``f_c`` the number of pixels of class ``c`` divided by the number of
  (counted) pixels of the images in which ``c`` is present; the median is over the classes that occur.
- ENet (Paszke et al., 2016, arXiv:1606.02147, Sec. 5.2): ``w_c = 1 / ln(k + p_c)`` with ``p_c`` the
  share of class ``c`` among all counted pixels and ``k = 1.02``, which bounds the weights in [1, 50].

A class that never occurs gets weight 0 under median frequency (it cannot be balanced) and the largest
weight, ``1 / ln(k)``, under ENet's rule. Pixels equal to the ignore index are not counted.

``pixelseg stats DATASET_CONFIG_OR_NAME`` prints both; paste a row into a config as
``loss: [{name: cross_entropy, params: {class_weights: [...]}}]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PixelsegError

ENET_C = 1.02


@dataclass
class ClassStats:
    """Pixel counts of a dataset split: per class, and of the images in which each class is present."""

    classes: list[str]
    pixels: np.ndarray  # (C,) pixels of each class
    image_pixels: np.ndarray  # (C,) counted pixels of the images containing the class
    images: int

    @property
    def frequency(self) -> np.ndarray:
        """Share of each class among all counted pixels."""
        total = self.pixels.sum()
        return self.pixels / total if total else np.zeros(len(self.pixels))

    def median_frequency_weights(self) -> np.ndarray:
        return median_frequency_weights(self.pixels, self.image_pixels)

    def enet_weights(self, c: float = ENET_C) -> np.ndarray:
        return enet_weights(self.pixels, c)


def count_classes(masks: Any, num_classes: int, ignore_index: int | None = 255) -> tuple[np.ndarray, np.ndarray, int]:
    """``(pixels, image_pixels, images)`` over an iterable of integer label maps."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    images = 0
    for mask in masks:
        labels = np.asarray(mask).reshape(-1)
        if ignore_index is not None:
            labels = labels[labels != ignore_index]
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}) or be the ignore index")
        counts = np.bincount(labels, minlength=num_classes)
        pixels += counts
        image_pixels += np.where(counts > 0, labels.size, 0)
        images += 1
    return pixels, image_pixels, images


def median_frequency_weights(pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Eigen & Fergus's ``median(f) / f_c``; 0 for classes that never occur."""
    pixels, image_pixels = np.asarray(pixels, dtype=np.float64), np.asarray(image_pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        return np.zeros(len(pixels))
    frequency = np.divide(pixels, image_pixels, out=np.zeros_like(pixels), where=present)
    median = np.median(frequency[present])
    return np.divide(median, frequency, out=np.zeros_like(pixels), where=present)


def enet_weights(pixels: np.ndarray, c: float = ENET_C) -> np.ndarray:
    """ENet's ``1 / ln(c + p_c)`` with ``p_c`` the class's share of all counted pixels."""
    pixels = np.asarray(pixels, dtype=np.float64)
    total = pixels.sum()
    share = pixels / total if total > 0 else np.zeros_like(pixels)
    return 1.0 / np.log(c + share)


def count_dataset_classes(dataset: Any, classes: list[str], ignore_index: int | None,
                          limit: int | None = None) -> ClassStats:
    """Count the classes of a dataset's raw masks (``dataset.load(i)[1]``, before any transform), the
    first ``limit`` samples only if given."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    masks = (dataset.load(index)[1] for index in range(count))
    try:
        pixels, image_pixels, images = count_classes(masks, len(classes), ignore_index)
    except ValueError as err:
        raise PixelsegError(f"counting classes: {err}") from None
    return ClassStats(list(classes), pixels, image_pixels, images)


def format_table(stats: ClassStats) -> str:
    median, enet = stats.median_frequency_weights(), stats.enet_weights()
    width = max(len("class"), *(len(name) for name in stats.classes))
    lines = [f"{stats.images} images, {int(stats.pixels.sum())} counted pixels",
             f"{'class':<{width}}  {'pixels':>12}  {'frequency':>9}  {'median-freq':>11}  {'enet':>8}"]
    for name, pixels, share, m, e in zip(stats.classes, stats.pixels, stats.frequency, median, enet, strict=True):
        lines.append(f"{name:<{width}}  {int(pixels):>12}  {share:>9.5f}  {m:>11.4f}  {e:>8.4f}")
    lines.append(f"median_frequency: {json.dumps([round(float(w), 6) for w in median])}")
    lines.append(f"enet: {json.dumps([round(float(w), 6) for w in enet])}")
    return "\n".join(lines)
