"""What the one-stage instance models (YOLACT, PolarMask) share: a P3-P7 feature pyramid, torchvision's
detection interface and the mapping of their outputs back to the input images.

The pyramid is RetinaNet's (Lin et al., ICCV 2017, arXiv:1708.02002): an FPN over C3-C5 (strides 8-32)
and P6, P7 from stride-2 3x3 convolutions on P5 (strides 64 and 128). :class:`OneStageInstanceModel`
takes a list of ``(3, H, W)`` images in ``[0, 1]`` (and, in training, torchvision detection targets),
resizes, normalises and batches them with torchvision's ``GeneralizedRCNNTransform``, and calls the
subclass's ``compute_losses`` (training: a dict of losses) or ``detect`` (eval: per image ``boxes``,
``labels``, ``scores`` and ``masks`` ``(N, 1, H, W)`` at the resized size), mapped back to each
original image size here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50, resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from ...errors import PixelsegError
from ..base import SavesPretrained
from .detection import _load_backbone_weights

ONE_STAGE_BACKBONES = ("resnet50", "resnet101", "resnet18", "mobilenet_v3_large")
PYRAMID_STRIDES = (8, 16, 32, 64, 128)  # P3-P7
_MOBILENET_TAPS = [6, 12, 16]  # MobileNetV3-Large blocks ending strides 8, 16 and 32

Target = dict[str, Tensor]


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _backbone_body(backbone: str, weights: str | None) -> nn.Module:
    """The classification network whose stages feed a pyramid: MobileNetV3-Large's ``features`` or a ResNet
    (from scratch BatchNorm learns; with ImageNet weights it is frozen, as the papers train)."""
    if backbone not in ONE_STAGE_BACKBONES:
        raise PixelsegError(f"unknown backbone '{backbone}' (choose from {', '.join(ONE_STAGE_BACKBONES)})")
    if backbone == "mobilenet_v3_large":
        body = mobilenet_v3_large(weights=None).features
    else:
        build = {"resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101}[backbone]
        body = build(weights=None, norm_layer=FrozenBatchNorm2d if weights else nn.BatchNorm2d)
    if weights:
        _load_backbone_weights(body, weights)
    return body


def retina_pyramid(backbone: str, channels: int = 256, weights: str | None = None) -> BackboneWithFPN:
    """``backbone`` with an FPN on C3-C5 plus P6, P7 (from P5): five levels "0"-"4", strides 8-128."""
    body = _backbone_body(backbone, weights)
    if backbone == "mobilenet_v3_large":
        in_channels = [_out_channels(body[tap]) for tap in _MOBILENET_TAPS]
        return_layers = {str(tap): str(level) for level, tap in enumerate(_MOBILENET_TAPS)}
    else:
        width = 1 if backbone == "resnet18" else 4
        in_channels = [128 * width, 256 * width, 512 * width]
        return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    return BackboneWithFPN(body, return_layers, in_channels, channels,
                           extra_blocks=LastLevelP6P7(channels, channels))


class _StridedLevels(ExtraFPNBlock):
    """``count`` levels past P5 (P6, P7, ...) by stride-2 3x3 convolutions, the first on C5 and a ReLU before each
    of the others (detectron2's RetinaNet pyramid); ``count = 0`` adds nothing."""

    def __init__(self, in_channels: int, out_channels: int, count: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels if k == 0 else out_channels, out_channels, 3, 2, 1)
                                   for k in range(count))
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        x = c[-1]
        for index, conv in enumerate(self.convs):
            x = conv(x if index == 0 else F.relu(x))
            p.append(x)
            names.append(str(len(names)))
        return p, names


def stride4_pyramid(backbone: str, channels: int = 256, weights: str | None = None,
                    num_levels: int = 6) -> BackboneWithFPN:
    """``backbone`` with an FPN from C2: ``num_levels`` levels "0", "1", ... at strides 4, 8, ... (P2-P7 for 6).

    Up to four levels come from an FPN on C2 .. C(num_levels + 1) (the backbone stops there); P6 and P7 from
    stride-2 convolutions on C5 (TensorMask's reference pyramid, detectron2's RetinaNet variant).
    """
    if not 1 <= num_levels <= 6:
        raise PixelsegError(f"num_levels counts the pyramid levels from P2 and must be 1-6 (P2-P7), got {num_levels}")
    taps = min(num_levels, 4)
    body = _backbone_body(backbone, weights)
    if backbone == "mobilenet_v3_large":
        blocks = [3, *_MOBILENET_TAPS][:taps]  # block 3 ends stride 4
        in_channels = [_out_channels(body[block]) for block in blocks]
        return_layers = {str(block): str(level) for level, block in enumerate(blocks)}
    else:
        width = 1 if backbone == "resnet18" else 4
        in_channels = [64 * width * 2 ** k for k in range(taps)]
        return_layers = {f"layer{k + 1}": str(k) for k in range(taps)}
    extra = _StridedLevels(in_channels[-1], channels, num_levels - taps)
    return BackboneWithFPN(body, return_layers, in_channels, channels, extra_blocks=extra)


def pad_masks(masks: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
    """Each image's ``(N, h, w)`` masks zero-padded at the bottom and right to the batch size ``(H, W)``."""
    return [F.pad(m, (0, size[1] - m.shape[-1], 0, size[0] - m.shape[-2])) for m in masks]


class OneStageInstanceModel(SavesPretrained, nn.Module):
    """Base of the one-stage instance models: ``transform`` and ``backbone`` (the pyramid), as torchvision's
    detectors have them, so precise BatchNorm (``tasks.instance``) runs the same way for every detector."""

    class_names: list[str]
    binary_masks = False  # masks are 0/1 (re-thresholded at 0.5 after resizing), not probabilities

    def __init__(self, backbone: BackboneWithFPN, transform: GeneralizedRCNNTransform) -> None:
        super().__init__()
        self.backbone, self.transform = backbone, transform

    def forward(self, images: list[Tensor], targets: list[Target] | None = None):
        if self.training and targets is None:
            raise PixelsegError("in training mode the model needs targets")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, targets = self.transform(images, targets)
        features = list(self.backbone(image_list.tensors).values())
        if self.training:
            return self.compute_losses(features, image_list.tensors.shape[-2:], image_list.image_sizes, targets)
        detections = self.detect(features, image_list.tensors.shape[-2:], image_list.image_sizes)
        return [self._to_original(d, size, original)
                for d, size, original in zip(detections, image_list.image_sizes, original_sizes, strict=True)]

    def _to_original(self, detection: dict[str, Tensor], size: tuple[int, int],
                     original: tuple[int, int]) -> dict[str, Tensor]:
        masks = detection["masks"][:, :, : size[0], : size[1]]
        if len(masks) and tuple(masks.shape[-2:]) != original:
            masks = F.interpolate(masks, size=original, mode="bilinear", align_corners=False)
            if self.binary_masks:
                masks = (masks >= 0.5).to(masks.dtype)
        return {"boxes": resize_boxes(detection["boxes"], list(size), list(original)),
                "labels": detection["labels"], "scores": detection["scores"],
                "masks": masks.reshape(len(masks), 1, *original)}

    def compute_losses(self, features: list[Tensor], batch_size: torch.Size, image_sizes: list[tuple[int, int]],
                       targets: list[Target]) -> dict[str, Tensor]:
        raise NotImplementedError

    def detect(self, features: list[Tensor], batch_size: torch.Size,
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        raise NotImplementedError


def empty_detections(height: int, width: int, device: torch.device) -> dict[str, Tensor]:
    return {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.int64, device=device),
            "scores": torch.zeros(0, device=device), "masks": torch.zeros(0, 1, height, width, device=device)}

