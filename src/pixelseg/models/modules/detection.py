"""The detection trunk and heads that Mask R-CNN, Panoptic FPN and the keypoint head share (He et al., 2017, arXiv:1703.06870).

A backbone with a Feature Pyramid Network (Lin et al., CVPR 2017, arXiv:1612.03144): levels "0"-"3"
(strides 4-32) plus "pool" (stride 64, for the RPN), and one anchor size per level. ``"resnet50"`` is
the paper's ResNet-50-FPN; ``"mobilenet_v3_large"`` a light variant (Howard et al., 2019,
arXiv:1905.02244) tapped at the last block of each resolution.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ...errors import PixelsegError
from .roi_ops import MultiLevelRoIAlign

BACKBONES = ("resnet50", "mobilenet_v3_large")
PYRAMID_LEVELS = ["0", "1", "2", "3"]
# MobileNetV3-Large blocks that end each resolution (strides 4, 8, 16 and 32).
_MOBILENET_TAPS = [3, 6, 12, 16]


def _load_backbone_weights(module: nn.Module, path: str) -> None:
    from ...io.checkpoint import load_state_dict

    state = load_state_dict(path)
    missing, _ = module.load_state_dict(state, strict=False)
    if len(missing) == len(module.state_dict()):
        raise PixelsegError("no backbone weight matched the backbone's parameter names", path)


def _resnet50_fpn(fpn_channels: int, weights: str | None) -> BackboneWithFPN:
    # Trained from scratch, BatchNorm learns; with ImageNet weights it is frozen (as in the paper).
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d if weights else nn.BatchNorm2d)
    if weights:
        _load_backbone_weights(body, weights)
    return_layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    return BackboneWithFPN(body, return_layers, [256, 512, 1024, 2048], fpn_channels,
                           extra_blocks=LastLevelMaxPool())


def _mobilenet_v3_fpn(fpn_channels: int, weights: str | None, width_mult: float) -> BackboneWithFPN:
    body = mobilenet_v3_large(weights=None, width_mult=width_mult).features
    if weights:
        _load_backbone_weights(body, weights)
    channels = [_out_channels(body[tap]) for tap in _MOBILENET_TAPS]
    return_layers = {str(tap): str(level) for level, tap in enumerate(_MOBILENET_TAPS)}
    return BackboneWithFPN(body, return_layers, channels, fpn_channels, extra_blocks=LastLevelMaxPool())


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def feature_pyramid(backbone: str, fpn_channels: int, weights: str | None = None,
                    width_mult: float = 1.0) -> BackboneWithFPN:
    """The backbone with its FPN: levels "0"-"3" (strides 4-32) and "pool" (stride 64)."""
    if backbone not in BACKBONES:
        raise PixelsegError(f"unknown Mask R-CNN backbone '{backbone}' (choose from {', '.join(BACKBONES)})")
    if backbone == "resnet50":
        return _resnet50_fpn(fpn_channels, weights)
    return _mobilenet_v3_fpn(fpn_channels, weights, width_mult)


def pyramid_anchors(sizes: list[int]) -> AnchorGenerator:
    """One anchor size per pyramid level (P2-P6), aspect ratios 0.5, 1 and 2."""
    if len(sizes) != len(PYRAMID_LEVELS) + 1:
        raise PixelsegError(f"anchor_sizes needs one size per level (P2-P6: 5), got {sizes}")
    return AnchorGenerator(tuple((size,) for size in sizes), ((0.5, 1.0, 2.0),) * len(sizes))


def rpn_and_box_pool(anchor_sizes: list[int] | None, sampling_ratio: int,
                     roi_align_impl: str) -> dict[str, nn.Module]:
    """The region proposal anchors (32-512 over P2-P6 by default) and the 7 x 7 box RoIAlign, as the
    keywords of torchvision's R-CNN classes."""
    return {
        "rpn_anchor_generator": pyramid_anchors(anchor_sizes or [32, 64, 128, 256, 512]),
        "box_roi_pool": MultiLevelRoIAlign(PYRAMID_LEVELS, 7, sampling_ratio, implementation=roi_align_impl),
    }


def mask_rcnn_components(
    num_classes: int,
    *,
    fpn_channels: int,
    representation_size: int,
    mask_head_channels: int,
    anchor_sizes: list[int] | None,
    sampling_ratio: int,
    roi_align_impl: str,
) -> dict[str, nn.Module]:
    """Mask R-CNN's modules on top of the feature pyramid, as keywords of torchvision's ``MaskRCNN``:
    anchors, box RoIAlign (7 x 7) + 2x FC head + classifier, mask RoIAlign (14 x 14) + 4 conv 3x3 +
    2x deconvolution + one 1x1 conv per class."""
    return {
        **rpn_and_box_pool(anchor_sizes, sampling_ratio, roi_align_impl),
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        "box_predictor": FastRCNNPredictor(representation_size, num_classes),
        "mask_roi_pool": MultiLevelRoIAlign(PYRAMID_LEVELS, 14, sampling_ratio, implementation=roi_align_impl),
        "mask_head": MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1),
        "mask_predictor": MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
    }


def check_detector_keywords(keywords: dict[str, Any], builder: Callable[..., Any], model: str) -> None:
    """Refuse keywords that torchvision's Mask R-CNN would swallow silently (it passes unknown ones on
    to its image transform, which ignores them), naming the closest known one. ``builder``'s own
    parameters count as known."""
    known = {name for cls in (MaskRCNN, FasterRCNN, GeneralizedRCNNTransform)
             for name in inspect.signature(cls.__init__).parameters} - {"self", "kwargs"}
    known |= set(inspect.signature(builder).parameters) - {"detector_kwargs"}
    for key in sorted(set(keywords) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PixelsegError(f"unknown {model} keyword '{key}'{hint}")


def check_rgb(in_channels: int, name: str) -> None:
    """The detectors normalise three channels (torchvision's ``GeneralizedRCNNTransform``)."""
    if in_channels != 3:
        raise PixelsegError(f"model '{name}' takes RGB images (in_channels=3), not {in_channels} channels")


def check_num_classes(num_classes: int) -> None:
    """Detectors count the background as class 0, so at least one object class makes two."""
    if num_classes < 2:
        raise PixelsegError(f"num_classes counts the background and must be at least 2, got {num_classes}")


def class_names_or_default(class_names: list[str] | None, num_classes: int) -> list[str]:
    """``class_names`` (background first), or ``background, class_1, ...`` when none are given."""
    names = list(class_names) if class_names else ["background"] + [f"class_{k}" for k in range(1, num_classes)]
    if len(names) != num_classes:
        raise PixelsegError(f"{len(names)} class names for {num_classes} classes (background included)")
    return names
