"""Shapes: a built-in synthetic segmentation set that needs no download.

Textured circles, squares and triangles of random size, rotation, colour and texture (stripes, checks
or noise) on a cluttered background (smooth colour noise, lines and small distractor blobs that are
background). Each class has its own shape and texture pattern (circles striped, squares checked,
triangles noisy) in random colours, so the class is never the colour. Every sample is
a pure function of ``(seed, split, index)``: the same seed gives the same data on any machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

SHAPES_CLASSES = ["background", "circle", "square", "triangle"]
SHAPES_PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200)]
_SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def _texture(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, kind: int) -> np.ndarray:
    """An RGB texture (H, W, 3) in [0, 1] of two random colours: stripes (0), checks (1) or noise (2)."""
    first, second = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    period = rng.uniform(4, 12)
    angle = rng.uniform(0, np.pi)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    v = -xs * np.sin(angle) + ys * np.cos(angle)
    if kind == 0:
        mix = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif kind == 1:
        mix = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        mix = rng.uniform(0, 1, ys.shape).astype(np.float32)
    return first * mix[..., None] + second * (1 - mix[..., None])


def _shape_mask(kind: int, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, radius: float,
                angle: float) -> np.ndarray:
    dy, dx = ys - cy, xs - cx
    if kind == 1:  # circle
        return dy**2 + dx**2 <= radius**2
    if kind == 2:  # square, rotated
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        half = radius / np.sqrt(2) * 1.15
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # triangle: inside three half-planes of an equilateral triangle, rotated
    inside = np.ones_like(ys, dtype=bool)
    for k in range(3):
        theta = angle + k * 2 * np.pi / 3
        inside &= dx * np.cos(theta) + dy * np.sin(theta) <= radius * 0.6
    return inside


def render_shapes(seed: int, size: int = 128, max_shapes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One sample: an RGB uint8 image (size, size, 3) and its int64 class mask."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background clutter: low-frequency colour noise, lines and small blobs, all labelled background.
    coarse = rng.uniform(0, 1, (5, 5, 3)).astype(np.float32)
    background = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size),
                                                                                   Image.BICUBIC)) / 255.0
    image = 0.6 * background + 0.4 * rng.uniform(0, 1, (size, size, 3)) * 0.5
    for _ in range(rng.integers(2, 6)):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-size / 2, size / 2)
        distance = np.abs((xs - size / 2) * np.sin(angle) - (ys - size / 2) * np.cos(angle) - offset)
        image[distance < rng.uniform(0.5, 1.5)] = rng.uniform(0, 1, 3)
    for _ in range(rng.integers(0, 4)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 3.5)
        image[(ys - cy) ** 2 + (xs - cx) ** 2 <= r**2] = rng.uniform(0, 1, 3)
    mask = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(1, max_shapes + 1)):
        kind = int(rng.integers(1, 4))
        radius = rng.uniform(size * 0.09, size * 0.2)
        cy, cx = rng.uniform(radius, size - radius), rng.uniform(radius, size - radius)
        inside = _shape_mask(kind, ys, xs, cy, cx, radius, rng.uniform(0, 2 * np.pi))
        image[inside] = _texture(rng, ys, xs, kind - 1)[inside]
        mask[inside] = kind  # later shapes occlude earlier ones
    image = np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1)
    return (image * 255).astype(np.uint8), mask


class Shapes(Dataset):
    """``num_samples`` synthetic images of ``size``x``size``; classes: background, circle, square, triangle."""

    classes = SHAPES_CLASSES
    palette = SHAPES_PALETTE
    num_classes = len(SHAPES_CLASSES)
    in_channels = 3

    def __init__(self, num_samples: int = 512, *, size: int = 128, split: str = "train", seed: int = 0,
                 ignore_index: int = 255, transform: Callable | None = None) -> None:
        if split not in _SPLIT_OFFSETS:
            raise ValueError(f"unknown split {split!r} (train, val or test)")
        self.num_samples, self.size, self.split, self.seed = num_samples, size, split, seed
        self.ignore_index = ignore_index
        self.transform = transform

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        sample_seed = self.seed * 10_000_019 + _SPLIT_OFFSETS[self.split] + index
        image, mask = render_shapes(sample_seed, self.size)
        return Image.fromarray(image), mask

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask
