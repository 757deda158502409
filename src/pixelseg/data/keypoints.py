"""A synthetic keypoint data set: triangles whose three corners are the keypoints.

Each image holds one to three non-overlapping triangles on a noisy background; the targets follow
torchvision's keypoint detection format (``boxes``, ``labels``, ``keypoints`` as (x, y, visibility)), so
Keypoint R-CNN (``pixelseg.models.keypoint_rcnn``) can be trained and checked on it without any download.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .instances import _image_tensor


def render_triangles(seed: int, size: int = 96, max_objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of non-overlapping triangles and their corners ``(N, 3, 2)`` as (x, y).

    The corners are ordered so that each keypoint type means the same thing in every triangle:
    0 = the top corner (smallest y), then the remaining two from left to right.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = np.ones((size, size, 3)) * rng.uniform(0.2, 0.8, 3) + rng.normal(0, 0.02, (size, size, 3))
    taken = np.zeros((size, size), dtype=bool)
    corners = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        centre = rng.uniform(0.25, 0.75, 2) * size
        radius = rng.uniform(0.12, 0.22) * size
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.4, 0.4, 3)
        points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        inside = np.ones_like(taken)
        for k in range(3):  # inside all three edges (same side as the opposite corner)
            a, b, c = points[k], points[(k + 1) % 3], points[(k + 2) % 3]
            edge = (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])
            side = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
            inside &= edge * np.sign(side) >= 0
        if (inside & taken).any() or inside.sum() < 30:
            continue
        taken |= inside
        image[inside] = rng.uniform(0, 1, 3)
        top = int(np.argmin(points[:, 1]))
        rest = sorted((k for k in range(3) if k != top), key=lambda k: points[k, 0])
        corners.append(points[[top, *rest]])
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return image, np.asarray(corners, dtype=np.float32).reshape(-1, 3, 2)


class SyntheticKeypoints(Dataset):
    """Triangles with their three corners as keypoints (torchvision keypoint targets), by seed."""

    keypoint_names = ["top", "left", "right"]

    def __init__(self, length: int = 256, *, size: int = 96, seed: int = 0,
                 split: Literal["train", "val"] = "train") -> None:
        self.length, self.size = length, size
        self.base_seed = seed * 10_000_019 + (0 if split == "train" else 1_000_003) + 7

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, corners = render_triangles(self.base_seed + index, self.size)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        visible = np.full((len(corners), 3, 1), 2.0, dtype=np.float32)  # COCO: 2 = labelled and visible
        return _image_tensor(image), {
            "boxes": torch.from_numpy(boxes).reshape(-1, 4),
            "labels": torch.ones(len(corners), dtype=torch.int64),
            "keypoints": torch.from_numpy(np.concatenate([corners, visible], axis=2)).reshape(-1, 3, 3),
            "image_id": torch.tensor(index),
        }
