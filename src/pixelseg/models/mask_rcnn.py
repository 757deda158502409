"""Mask R-CNN (He, Gkioxari, Dollár, Girshick, 2017, arXiv:1703.06870).

The one idea: add a small fully convolutional branch to Faster R-CNN that predicts a ``28 x 28``
binary mask for each detected box, one mask per class (the box classifier decides which one is
used, so masks do not compete between classes), reading its features through RoIAlign, which keeps
the exact sub-pixel position of the box instead of RoIPool's rounding.

Built on torchvision's detection machinery (RPN, box and mask heads, losses, transforms); the RoI
feature extraction is :class:`~pixelseg.models.roi_ops.MultiLevelRoIAlign`, our own RoIAlign
(``roi_align_impl="torchvision"`` switches to torchvision's kernel). Backbones:

- ``"resnet50"``: ResNet-50-FPN as in the paper's strongest setting (FPN levels P2-P5 plus P6 for the
  RPN, 256 channels, box head 2x1024 FC, mask head 4 conv 3x3 of 256 + 2x deconvolution + one 1x1
  conv per class). With 91 classes this is torchvision's ``maskrcnn_resnet50_fpn``, 44.4 M parameters.
- ``"mobilenet_v3_large"``: a light variant, MobileNetV3-Large (Howard et al., 2019, arXiv:1905.02244)
  tapped at strides 4, 8, 16 and 32 (the last block of each resolution) under the same FPN, with
  ``fpn_channels``, ``representation_size`` and ``mask_head_channels`` as width knobs.

Models are saved as ``config.json`` (``"task": "instance"``) plus ``model.safetensors``; no pickle.
"""

from __future__ import annotations

import difflib
import inspect
import json
from pathlib import Path
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

from ..errors import PixelsegError
from .roi_ops import MultiLevelRoIAlign

BACKBONES = ("resnet50", "mobilenet_v3_large")
PYRAMID_LEVELS = ["0", "1", "2", "3"]
# MobileNetV3-Large blocks that end each resolution (strides 4, 8, 16 and 32).
_MOBILENET_TAPS = [3, 6, 12, 16]


def _load_backbone_weights(module: nn.Module, path: str) -> None:
    from ..io.checkpoint import load_state_dict

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


def check_detector_keywords(keywords: dict[str, Any]) -> None:
    """Refuse keywords that torchvision's Mask R-CNN would swallow silently (it passes unknown ones on
    to its image transform, which ignores them), naming the closest known one."""
    known = {name for cls in (MaskRCNN, FasterRCNN, GeneralizedRCNNTransform)
             for name in inspect.signature(cls.__init__).parameters} - {"self", "kwargs"}
    known |= {name for name in inspect.signature(build_mask_rcnn).parameters} - {"detector_kwargs"}
    for key in sorted(set(keywords) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PixelsegError(f"unknown Mask R-CNN keyword '{key}'{hint}")


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
    class_names: list[str] | None = None,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with ``num_classes`` classes including background.

    The defaults build the paper's ResNet-50-FPN configuration (torchvision's hyper-parameters:
    images resized to 800 on the short side, anchors 32-512 over P2-P6 at ratios 0.5, 1, 2).
    ``detector_kwargs`` go to torchvision's ``MaskRCNN`` (e.g. ``rpn_post_nms_top_n_train``,
    ``box_batch_size_per_image``, ``box_detections_per_img``).
    """
    if num_classes < 2:
        raise PixelsegError(f"num_classes counts the background and must be at least 2, got {num_classes}")
    check_detector_keywords(detector_kwargs)
    features = feature_pyramid(backbone, fpn_channels, backbone_weights, width_mult)
    sizes = anchor_sizes or [32, 64, 128, 256, 512]
    anchors = pyramid_anchors(sizes)
    box_pool = MultiLevelRoIAlign(PYRAMID_LEVELS, 7, sampling_ratio, implementation=roi_align_impl)
    mask_pool = MultiLevelRoIAlign(PYRAMID_LEVELS, 14, sampling_ratio, implementation=roi_align_impl)
    model = MaskRCNN(
        features,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
        **detector_kwargs,
    )
    model.pixelseg_config = {
        "task": "instance", "name": "mask_rcnn", "num_classes": num_classes,
        "class_names": class_names or ["background"] + [f"class_{k}" for k in range(1, num_classes)],
        "kwargs": {"backbone": backbone, "width_mult": width_mult, "fpn_channels": fpn_channels,
                   "representation_size": representation_size, "mask_head_channels": mask_head_channels,
                   "roi_align_impl": roi_align_impl, "sampling_ratio": sampling_ratio,
                   "anchor_sizes": list(sizes), "min_size": min_size, "max_size": max_size,
                   **detector_kwargs},
    }
    return model


def build_from_config(config: dict[str, Any]) -> MaskRCNN:
    """Rebuild a model from its ``config.json`` record (see :func:`save_instance_model`)."""
    model = build_mask_rcnn(config["num_classes"], class_names=config.get("class_names"), **config["kwargs"])
    if "category_ids" in config:
        model.pixelseg_config["category_ids"] = list(config["category_ids"])
    return model


def save_instance_model(model: MaskRCNN, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically."""
    from ..io.checkpoint import atomic_write_bytes, save_state_dict_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_state_dict_atomic(model.state_dict(), directory / "model.safetensors")
    atomic_write_bytes(directory / "config.json", json.dumps(model.pixelseg_config, indent=2).encode())
    return directory


def find_instance_model(path: str | Path) -> Path | None:
    """The saved instance model at ``path``: the folder itself or a run folder's ``model/``, when its
    ``config.json`` says ``"task": "instance"``; None otherwise (the main CLI then treats ``path`` as a
    semantic model)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        config_path = candidate / "config.json"
        if not config_path.is_file():
            continue
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        if isinstance(config, dict) and config.get("task") == "instance":
            return candidate
    return None


def load_instance_model(directory: str | Path) -> MaskRCNN:
    """Rebuild a model saved by :func:`save_instance_model`: config first, then weights. No pickle."""
    from ..io.checkpoint import load_state_dict

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise PixelsegError("not a saved instance model: file is missing", path)
    try:
        config = json.loads(config_path.read_text())
        if config.get("task") != "instance" or config.get("name") != "mask_rcnn":
            raise KeyError("task/name")
        model = build_from_config(config)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PixelsegError(f"not a Mask R-CNN config ({err})", config_path) from None
    try:
        model.load_state_dict(load_state_dict(weights_path))
    except RuntimeError as err:
        raise PixelsegError(f"weights do not fit the config ({str(err).splitlines()[0]})", weights_path) from None
    return model
