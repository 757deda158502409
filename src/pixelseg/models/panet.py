"""PANet, the Path Aggregation Network (Liu, Qi, Qin, Shi & Jia, CVPR 2018, arXiv:1803.01534).

The one idea: shorten the path from the low, well-localised levels of the feature pyramid to every
RoI. Three changes to Mask R-CNN with FPN:

1. **Bottom-up path augmentation**: after the FPN's top-down path, a second, bottom-up path
   ``N2 = P2`` and ``N_{i+1} = ReLU(conv3x3(ReLU(conv3x3_stride2(N_i)) + P_{i+1}))``, 256 channels.
2. **Adaptive feature pooling**: every RoI is pooled from *all* levels N2-N5 (not from the one its size
   picks); each level goes through its own first layer (the box head's first fc, the mask head's first
   conv) and the levels are fused by an element-wise maximum.
3. **Fully-connected fusion** in the mask head: from conv3, two 3x3 convs (the second halving the
   channels) and an fc to a class-agnostic ``28 x 28`` mask, reshaped and added to every class's mask
   logits of the FCN path (conv4, deconvolution, 1x1 conv).

Built on torchvision's ``MaskRCNN`` like :mod:`pixelseg.models.mask_rcnn` (same RPN, losses, transform and
output format); the pyramid comes from :func:`~pixelseg.models.modules.detection.feature_pyramid`. As in
the authors' code, the first layer after the pooling has separate weights for each level. The RPN reads
N2-N5 and a stride-64 level max-pooled from N5 (the "pool" level of FPN). Not built: the paper's
GroupNorm, multi-scale training and heavier heads (its 4-conv + 1-fc box head).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from ..errors import PixelsegError
from .base import SavesPretrained
from .modules.detection import (
    PYRAMID_LEVELS,
    check_detector_keywords,
    check_num_classes,
    check_rgb,
    class_names_or_default,
    feature_pyramid,
    pyramid_anchors,
)
from .modules.roi_ops import MultiLevelRoIAlign, boxes_to_rois
from .registry import register


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class BottomUpPathAugmentation(nn.Module):
    """The FPN backbone followed by the bottom-up path ``N2 .. N5`` (paper Fig. 2b); returns levels
    "0"-"3" (``N2``-``N5``, strides 4-32) and "pool" (``N5`` max-pooled, stride 64, for the RPN)."""

    def __init__(self, fpn: nn.Module, channels: int, levels: int = len(PYRAMID_LEVELS)) -> None:
        super().__init__()
        self.fpn = fpn
        self.out_channels = channels
        self.downsample = nn.ModuleList(_conv3x3(channels, channels, stride=2) for _ in range(levels - 1))
        self.fuse = nn.ModuleList(_conv3x3(channels, channels) for _ in range(levels - 1))

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        pyramid = self.fpn(images)
        levels = [pyramid[name] for name in PYRAMID_LEVELS]  # P2 .. P5
        outputs = [levels[0]]  # N2 = P2
        for down, fuse, lateral in zip(self.downsample, self.fuse, levels[1:], strict=True):
            reduced = F.relu(down(outputs[-1]))
            outputs.append(F.relu(fuse(reduced + lateral)))
        result = OrderedDict(zip(PYRAMID_LEVELS, outputs, strict=True))
        result["pool"] = F.max_pool2d(outputs[-1], 1, 2)
        return result


class AllLevelsRoIAlign(MultiLevelRoIAlign):
    """Adaptive feature pooling: RoIAlign of every box on every level; returns ``(K, L, C, h, w)``."""

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        rois = boxes_to_rois(boxes)
        image_h = max(shape[0] for shape in image_shapes)
        image_w = max(shape[1] for shape in image_shapes)
        pooled = []
        for name in self.featmap_names:
            level = features[name]
            approx = min(level.shape[-2] / image_h, level.shape[-1] / image_w)
            scale = 2.0 ** round(float(torch.tensor(approx).log2()))
            pooled.append(self._pool(level, rois, scale))
        return torch.stack(pooled, dim=1)


class AdaptiveBoxHead(nn.Module):
    """The 2-fc box head with the levels fused after the first fc: one ``fc6`` per level, element-wise
    max, ReLU, ``fc7``, ReLU."""

    def __init__(self, in_features: int, representation_size: int, levels: int = len(PYRAMID_LEVELS)) -> None:
        super().__init__()
        self.fc6 = nn.ModuleList(nn.Linear(in_features, representation_size) for _ in range(levels))
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, pooled: Tensor) -> Tensor:  # (K, L, C, 7, 7)
        per_level = [fc(pooled[:, index].flatten(1)) for index, fc in enumerate(self.fc6)]
        fused = torch.stack(per_level).amax(dim=0)
        return F.relu(self.fc7(F.relu(fused)))


class FusedMaskHead(nn.Module):
    """The mask head: per-level conv1 fused by max, conv2-conv4 (3x3), 2x deconvolution and one 1x1 conv
    per class (the FCN path), plus the fc path from conv3 (paper Fig. 4) added to every class's logits.

    Returns the mask logits ``(K, num_classes, 2 * roi_size, 2 * roi_size)``, so it takes the place of
    torchvision's mask head *and* predictor.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, roi_size: int = 14,
                 levels: int = len(PYRAMID_LEVELS)) -> None:
        super().__init__()
        self.mask_size = 2 * roi_size
        self.conv1 = nn.ModuleList(_conv3x3(in_channels, channels) for _ in range(levels))
        self.conv2 = _conv3x3(channels, channels)
        self.conv3 = _conv3x3(channels, channels)
        self.conv4 = _conv3x3(channels, channels)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.mask_logits = nn.Conv2d(channels, num_classes, 1)
        self.conv4_fc = _conv3x3(channels, channels)
        self.conv5_fc = _conv3x3(channels, channels // 2)
        self.fc = nn.Linear(channels // 2 * roi_size * roi_size, self.mask_size * self.mask_size)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def paths(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """The FCN logits ``(K, num_classes, 28, 28)`` and the fc logits ``(K, 1, 28, 28)``."""
        fused = torch.stack([conv(pooled[:, index]) for index, conv in enumerate(self.conv1)]).amax(dim=0)
        conv3 = F.relu(self.conv3(F.relu(self.conv2(F.relu(fused)))))
        fcn = self.mask_logits(F.relu(self.deconv(F.relu(self.conv4(conv3)))))
        branch = F.relu(self.conv5_fc(F.relu(self.conv4_fc(conv3))))
        fc = self.fc(branch.flatten(1)).view(-1, 1, self.mask_size, self.mask_size)
        return fcn, fc

    def forward(self, pooled: Tensor) -> Tensor:  # (K, L, C, 14, 14)
        fcn, fc = self.paths(pooled)
        return fcn + fc


class PixelsegPANet(SavesPretrained, MaskRCNN):
    """torchvision's ``MaskRCNN`` with PANet's backbone and heads, and ``save_pretrained``."""

    class_names: list[str]


def build_panet(
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
) -> PixelsegPANet:
    """PANet with ``num_classes`` classes including background.

    The defaults build the paper's ResNet-50 configuration on Mask R-CNN's (256 channels, box head
    2 x 1024 fc, mask head of 256 channels, RoIAlign 7 x 7 / 14 x 14, anchors 32-512 over P2-P6, images
    800 on the short side). ``detector_kwargs`` go to torchvision's ``MaskRCNN``.
    """
    check_num_classes(num_classes)
    if mask_head_channels < 2:
        raise PixelsegError(f"mask_head_channels must be at least 2 (the fc path halves it), got {mask_head_channels}")
    check_detector_keywords(detector_kwargs, build_panet, "PANet")
    trunk = BottomUpPathAugmentation(feature_pyramid(backbone, fpn_channels, backbone_weights, width_mult),
                                     fpn_channels)
    return PixelsegPANet(
        trunk,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=pyramid_anchors(anchor_sizes or [32, 64, 128, 256, 512]),
        box_roi_pool=AllLevelsRoIAlign(PYRAMID_LEVELS, 7, sampling_ratio, implementation=roi_align_impl),
        box_head=AdaptiveBoxHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_roi_pool=AllLevelsRoIAlign(PYRAMID_LEVELS, 14, sampling_ratio, implementation=roi_align_impl),
        mask_head=FusedMaskHead(fpn_channels, mask_head_channels, num_classes),
        mask_predictor=nn.Identity(),  # the head already returns the fused logits
        **detector_kwargs,
    )


@register("panet", paper="Liu, Qi, Qin, Shi & Jia, Path Aggregation Network for Instance Segmentation, "
                         "CVPR 2018, arXiv:1803.01534")
def panet(num_classes: int, in_channels: int = 3, *, class_names: list[str] | None = None,
          **kwargs: Any) -> PixelsegPANet:
    """PANet (``build_panet``'s keywords); ``class_names`` (background first) name the labels."""
    check_rgb(in_channels, "panet")
    model = build_panet(num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    return model
