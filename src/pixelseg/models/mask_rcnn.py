"""Mask R-CNN (He, Gkioxari, Dollár, Girshick, 2017, arXiv:1703.06870).

The one idea: add a small fully convolutional branch to Faster R-CNN that predicts a ``28 x 28``
binary mask for each detected box, one mask per class (the box classifier decides which one is
used, so masks do not compete between classes), reading its features through RoIAlign, which keeps
the exact sub-pixel position of the box instead of RoIPool's rounding.

Built on torchvision's detection machinery (RPN, box and mask heads, losses, transforms); the RoI
feature extraction is :class:`~pixelseg.models.modules.roi_ops.MultiLevelRoIAlign`, our own RoIAlign
(``roi_align_impl="torchvision"`` switches to torchvision's kernel). Backbones:

- ``"resnet50"``: ResNet-50-FPN as in the paper's strongest setting (FPN levels P2-P5 plus P6 for the
  RPN, 256 channels, box head 2x1024 FC, mask head 4 conv 3x3 of 256 + 2x deconvolution + one 1x1
  conv per class). With 91 classes this is torchvision's ``maskrcnn_resnet50_fpn``, 44.4 M parameters.
- ``"mobilenet_v3_large"``: a light variant, MobileNetV3-Large (Howard et al., 2019, arXiv:1905.02244)
  tapped at strides 4, 8, 16 and 32 (the last block of each resolution) under the same FPN, with
  ``fpn_channels``, ``representation_size`` and ``mask_head_channels`` as width knobs.

Registered as ``"mask_rcnn"``: ``create_model("mask_rcnn", num_classes=K, class_names=[...], backbone=...)``
builds it and ``save_pretrained``/``from_pretrained`` save and load it like every other model.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import MaskRCNN

from .base import SavesPretrained
from .modules.detection import (
    check_detector_keywords,
    check_num_classes,
    check_rgb,
    class_names_or_default,
    feature_pyramid,
    mask_rcnn_components,
)
from .registry import register


class PixelsegMaskRCNN(SavesPretrained, MaskRCNN):
    """torchvision's ``MaskRCNN`` (same modules, same state-dict keys) with ``save_pretrained``."""

    class_names: list[str]


def build_mask_rcnn(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    width_mult: float = 1.0,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    mask_head_channels: int = 256,
    roi_align_impl: str = "pixelseg",
    sampling_ratio: int = 2,
    anchor_sizes: list[int] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    **detector_kwargs: Any,
) -> PixelsegMaskRCNN:
    """Mask R-CNN with ``num_classes`` classes including background.

    The defaults build the paper's ResNet-50-FPN configuration (torchvision's hyper-parameters:
    images resized to 800 on the short side, anchors 32-512 over P2-P6 at ratios 0.5, 1, 2).
    ``detector_kwargs`` go to torchvision's ``MaskRCNN`` (e.g. ``rpn_post_nms_top_n_train``,
    ``box_batch_size_per_image``, ``box_detections_per_img``).
    """
    check_num_classes(num_classes)
    check_detector_keywords(detector_kwargs, build_mask_rcnn, "Mask R-CNN")
    return PixelsegMaskRCNN(
        feature_pyramid(backbone, fpn_channels, backbone_weights, width_mult),
        min_size=min_size,
        max_size=max_size,
        **mask_rcnn_components(num_classes, fpn_channels=fpn_channels, representation_size=representation_size,
                               mask_head_channels=mask_head_channels, anchor_sizes=anchor_sizes,
                               sampling_ratio=sampling_ratio, roi_align_impl=roi_align_impl),
        **detector_kwargs,
    )


@register("mask_rcnn", paper="He, Gkioxari, Dollár & Girshick, Mask R-CNN, ICCV 2017, arXiv:1703.06870")
def mask_rcnn(num_classes: int, in_channels: int = 3, *, class_names: list[str] | None = None,
              **kwargs: Any) -> PixelsegMaskRCNN:
    """Mask R-CNN (``build_mask_rcnn``'s keywords); ``class_names`` (background first) name the labels."""
    check_rgb(in_channels, "mask_rcnn")
    model = build_mask_rcnn(num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    return model
