"""Keypoint R-CNN: the Mask R-CNN keypoint head (He et al., 2017, arXiv:1703.06870, Section 5).

The one idea: a keypoint is a mask with a single foreground pixel. For each of ``K`` keypoint types
the head predicts an ``m x m`` map (56 x 56) inside the box and is trained with a softmax cross-entropy
over the ``m^2`` positions against the one-hot target, so each map learns to put all its mass on one
location. The head is 8 conv 3x3 of 512 channels, a 2x deconvolution and a 2x bilinear upsampling,
reading 14 x 14 RoIAlign features.

Built on torchvision's ``KeypointRCNN`` (its loss and post-processing) with the same backbones as
:func:`pixelseg.models.mask_rcnn.build_mask_rcnn` and our :class:`MultiLevelRoIAlign`.
:class:`SyntheticKeypoints` gives triangles whose three corners are the keypoints.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.models.detection import KeypointRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

from ..errors import PixelsegError
from ..data.instances import _image_tensor
from .mask_rcnn import PYRAMID_LEVELS, feature_pyramid, pyramid_anchors
from .roi_ops import MultiLevelRoIAlign


def build_keypoint_rcnn(
    num_keypoints: int,
    num_classes: int = 2,
    *,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    width_mult: float = 1.0,
    fpn_channels: int = 256,
    keypoint_head_channels: int = 512,
    keypoint_head_layers: int = 8,
    roi_align_impl: str = "pixelseg",
    anchor_sizes: list[int] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    **detector_kwargs: Any,
) -> KeypointRCNN:
    """Keypoint R-CNN with ``num_keypoints`` one-hot keypoint maps per box (defaults: the paper's
    ResNet-50-FPN head, 8 x conv 512; with 17 keypoints this is torchvision's
    ``keypointrcnn_resnet50_fpn``)."""
    if num_keypoints < 1:
        raise PixelsegError(f"num_keypoints must be at least 1, got {num_keypoints}")
    features = feature_pyramid(backbone, fpn_channels, backbone_weights, width_mult)
    return KeypointRCNN(
        features,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=pyramid_anchors(anchor_sizes or [32, 64, 128, 256, 512]),
        box_roi_pool=MultiLevelRoIAlign(PYRAMID_LEVELS, 7, 2, implementation=roi_align_impl),
        keypoint_roi_pool=MultiLevelRoIAlign(PYRAMID_LEVELS, 14, 2, implementation=roi_align_impl),
        keypoint_head=KeypointRCNNHeads(fpn_channels, [keypoint_head_channels] * keypoint_head_layers),
        keypoint_predictor=KeypointRCNNPredictor(keypoint_head_channels, num_keypoints),
        **detector_kwargs,
    )


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
