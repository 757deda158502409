"""Keypoint R-CNN: the Mask R-CNN keypoint head (He et al., 2017, arXiv:1703.06870, Section 5).

The one idea: a keypoint is a mask with a single foreground pixel. For each of ``K`` keypoint types
the head predicts an ``m x m`` map (56 x 56) inside the box and is trained with a softmax cross-entropy
over the ``m^2`` positions against the one-hot target, so each map learns to put all its mass on one
location. The head is 8 conv 3x3 of 512 channels, a 2x deconvolution and a 2x bilinear upsampling,
reading 14 x 14 RoIAlign features.

Built on torchvision's ``KeypointRCNN`` (its loss and post-processing) with the same backbones as
:func:`pixelseg.models.mask_rcnn.build_mask_rcnn` (``models.modules.detection``) and our
:class:`MultiLevelRoIAlign`. Registered as ``"keypoint_rcnn"``. A synthetic data set to train it on,
triangles whose three corners are the keypoints, is :class:`pixelseg.data.keypoints.SyntheticKeypoints`.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import KeypointRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

from ..errors import PixelsegError
from .base import SavesPretrained
from .modules.detection import (
    PYRAMID_LEVELS,
    check_detector_keywords,
    check_rgb,
    class_names_or_default,
    feature_pyramid,
    rpn_and_box_pool,
)
from .modules.roi_ops import MultiLevelRoIAlign
from .registry import register


class PixelsegKeypointRCNN(SavesPretrained, KeypointRCNN):
    """torchvision's ``KeypointRCNN`` (same modules, same state-dict keys) with ``save_pretrained``."""

    class_names: list[str]
    keypoint_names: list[str]


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
) -> PixelsegKeypointRCNN:
    """Keypoint R-CNN with ``num_keypoints`` one-hot keypoint maps per box (defaults: the paper's
    ResNet-50-FPN head, 8 x conv 512; with 17 keypoints this is torchvision's
    ``keypointrcnn_resnet50_fpn``)."""
    if num_keypoints < 1:
        raise PixelsegError(f"num_keypoints must be at least 1, got {num_keypoints}")
    check_detector_keywords(detector_kwargs, build_keypoint_rcnn, "Keypoint R-CNN")
    features = feature_pyramid(backbone, fpn_channels, backbone_weights, width_mult)
    return PixelsegKeypointRCNN(
        features,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        **rpn_and_box_pool(anchor_sizes, 2, roi_align_impl),
        keypoint_roi_pool=MultiLevelRoIAlign(PYRAMID_LEVELS, 14, 2, implementation=roi_align_impl),
        keypoint_head=KeypointRCNNHeads(fpn_channels, [keypoint_head_channels] * keypoint_head_layers),
        keypoint_predictor=KeypointRCNNPredictor(keypoint_head_channels, num_keypoints),
        **detector_kwargs,
    )


@register("keypoint_rcnn", paper="He, Gkioxari, Dollár & Girshick, Mask R-CNN (keypoint head, Section 5), "
                                 "ICCV 2017, arXiv:1703.06870")
def keypoint_rcnn(num_classes: int = 2, in_channels: int = 3, *, num_keypoints: int = 17,
                  class_names: list[str] | None = None, keypoint_names: list[str] | None = None,
                  **kwargs: Any) -> PixelsegKeypointRCNN:
    """Keypoint R-CNN (``build_keypoint_rcnn``'s keywords): ``num_keypoints`` maps per box (COCO: 17)."""
    check_rgb(in_channels, "keypoint_rcnn")
    model = build_keypoint_rcnn(num_keypoints, num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    model.keypoint_names = list(keypoint_names) if keypoint_names else [f"keypoint_{k}" for k in range(num_keypoints)]
    return model
