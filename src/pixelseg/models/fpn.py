"""FPN semantic segmentation head (Kirillov, Girshick, He & Dollár, "Panoptic Feature Pyramid Networks",
CVPR 2019, arXiv:1901.02446), on the feature pyramid of Lin et al. (CVPR 2017, arXiv:1612.03144).

The one idea: a feature pyramid built for detection already holds semantically strong features at every
scale; a light branch that brings every level to 1/4 resolution and sums them is enough for dense
labelling.

Feature pyramid: the encoder's maps C2..C5 (strides 4, 8, 16, 32) each get a lateral 1x1 convolution to
256 channels; the top-down pathway upsamples the coarser level 2x (nearest) and adds it; a 3x3 convolution
on every merged map gives P2..P5 (256 channels). Semantic branch (Sec. 3, Fig. 3): from each level,
repeated stages of 3x3 conv (128 channels) + GroupNorm (32 groups) + ReLU + 2x bilinear upsampling until
1/4 scale (P5: three stages, P4: two, P3: one, P2: one conv without upsampling); the four maps are summed
elementwise, a 1x1 convolution gives the class logits, and a 4x bilinear upsampling returns to the input
size. Any timm encoder with feature maps at strides 4, 8, 16 and 32 works (default ResNet-50, the paper's
smallest backbone). Inputs are padded to a multiple of 32 and the logits cropped back.

``upsampling`` names an operator of ``upsampling.py`` for every 2x upsampling of the decoder (top-down
pathway and semantic branch); ``None`` keeps the paper's: nearest in the top-down pathway, bilinear in the
semantic branch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel
from .encoders.timm import TimmEncoder
from .modules.blocks import crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register

PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_feature_indices(encoder: str, in_channels: int) -> tuple[int, ...]:
    """Indices of the timm features at strides 4, 8, 16, 32 (the last map of each stride)."""
    probe = TimmEncoder(encoder, in_channels=in_channels)
    indices = []
    for stride in PYRAMID_STRIDES:
        matching = [i for i, r in enumerate(probe.reductions) if r == stride]
        if not matching:
            raise ValueError(f"encoder '{encoder}' has no feature map at stride {stride} "
                             f"(its strides: {probe.reductions})")
        indices.append(matching[-1])
    return tuple(indices)


class FeaturePyramid(nn.Module):
    """Lateral 1x1 convs, top-down pathway (2x upsampling, nearest in the paper, + add), 3x3 output convs:
    C2..C5 → P2..P5."""

    def __init__(self, in_channels: list[int], channels: int = 256, upsampling: str = "nearest") -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.up = nn.ModuleList(make_upsample(upsampling, channels) for _ in in_channels[1:])

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        merged = [self.lateral[-1](features[-1])]
        for level in reversed(range(len(features) - 1)):
            lateral = self.lateral[level](features[level])
            merged.insert(0, lateral + self.up[level](merged[0], output_size=tuple(lateral.shape[-2:])))
        return [conv(p) for conv, p in zip(self.output, merged, strict=True)]


class ConvGnReluUp(nn.Sequential):
    """3x3 conv (no bias) + GroupNorm + ReLU, then 2x upsampling (bilinear in the paper) if ``upsample``."""

    def __init__(self, in_channels: int, out_channels: int, *, upsample: bool, groups: int = 32,
                 upsampling: str = "bilinear") -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                                   nn.GroupNorm(groups, out_channels), nn.ReLU(inplace=True)]
        if upsample:
            layers.append(make_upsample(upsampling, out_channels))
        super().__init__(*layers)


class SemanticBranch(nn.Module):
    """Brings P2..P5 to 1/4 scale (conv-GN-ReLU-2x stages), sums them, 1x1 conv to the classes."""

    def __init__(self, num_classes: int, pyramid_channels: int = 256, channels: int = 128,
                 upsampling: str = "bilinear") -> None:
        super().__init__()
        stages = []
        for level in range(len(PYRAMID_STRIDES)):
            upsamplings = level  # P2: 0, P3: 1, P4: 2, P5: 3
            blocks = [ConvGnReluUp(pyramid_channels if i == 0 else channels, channels, upsample=upsamplings > 0,
                                   upsampling=upsampling)
                      for i in range(max(1, upsamplings))]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        size = pyramid[0].shape[-2:]
        total = 0
        for stage, level in zip(self.stages, pyramid, strict=True):
            y = stage(level)
            if y.shape[-2:] != size:  # never with inputs padded to a multiple of 32
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = total + y
        return self.classifier(total)


class FPN(SegmentationModel):
    """Panoptic FPN's semantic segmentation branch on a timm encoder."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet50",
                 encoder_weights: str | None = None, pyramid_channels: int = 256,
                 segmentation_channels: int = 128, upsampling: str | None = None) -> None:
        super().__init__()
        if upsampling is not None and check_upsampling(upsampling) == "max_unpool":
            raise ValueError("FPN's decoder has no max-pooling indices to unpool with; choose another upsampling")
        indices = pyramid_feature_indices(encoder, in_channels)
        self.encoder = TimmEncoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                   out_indices=indices)
        self.pyramid = FeaturePyramid(self.encoder.channels, pyramid_channels, upsampling or "nearest")
        self.semantic = SemanticBranch(num_classes, pyramid_channels, segmentation_channels,
                                       upsampling or "bilinear")

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, 32)
        logits = self.semantic(self.pyramid(self.encoder(x)))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return crop_to(logits, size)


@register("fpn", paper="Kirillov et al., Panoptic Feature Pyramid Networks, CVPR 2019, arXiv:1901.02446")
def fpn(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
        encoder_weights: str | None = None, **kwargs) -> FPN:
    """The Panoptic FPN semantic head on ResNet-50 by default; ``encoder`` names any timm backbone."""
    return FPN(num_classes, in_channels, encoder=encoder or "resnet50", encoder_weights=encoder_weights, **kwargs)
