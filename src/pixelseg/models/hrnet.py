"""HRNetV2 (Sun, Zhao, Jiang, Cheng, Xiao, Liu, Mu, Wang, Liu & Wang, 2019, arXiv:1904.04514,
"High-Resolution Representations for Labeling Pixels and Regions").

The one idea: never lose the high resolution. Instead of encoding down to a coarse map and decoding
back up, the network keeps a stride-4 stream alive from the stem to the head and adds a lower
resolution stream at each stage (stride 8, 16, 32), so that stage 2, 3 and 4 run 2, 3 and 4 parallel
streams of residual blocks. After every multi-resolution module each stream receives the sum of all
streams brought to its resolution ("repeated multi-resolution fusion": strided 3x3 convolutions going
down, 1x1 convolution + upsampling going up). The HRNetV2 head upsamples the four outputs to stride 4,
concatenates them (15 C channels for width C) and classifies with 1x1 conv + BN + ReLU + 1x1 conv.

Layout (width C = 18 or 48): stem of two stride-2 3x3 convolutions (64 channels); stage 1: four
bottleneck blocks (64 → 256 channels); stages 2/3/4: 1/4/3 modules of four basic blocks per stream with
C, 2C, 4C, 8C channels. ``hrnetv2_w48`` with 19 classes has the 65.9M parameters of the paper's
Cityscapes table. The module names follow the authors' release (also used by timm's ``hrnet_w*``), so
ImageNet weights from timm load into the backbone with ``encoder_weights``. The trunk is
``models.encoders.hrnet.HRNetBackbone``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel
from .encoders.hrnet import HRNetBackbone, UpsampleMode
from .modules.blocks import crop_to, pad_to_multiple
from .registry import register


class HRNetV2(SegmentationModel):
    """HRNetV2 for semantic segmentation: HRNet backbone + the concatenate-all-resolutions head."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, width: int = 48,
                 encoder_weights: str | None = None, upsample_mode: UpsampleMode = "bilinear") -> None:
        super().__init__()
        if upsample_mode not in ("bilinear", "nearest"):
            raise PixelsegError(f"model 'hrnetv2': upsample_mode must be 'bilinear' or 'nearest', "
                                f"not {upsample_mode!r}")
        self.backbone = HRNetBackbone(width, in_channels, upsample_mode=upsample_mode)
        if encoder_weights is not None:
            self.backbone.load_timm_hrnet(encoder_weights, f"hrnet_w{width}")
        head_channels = sum(self.backbone.widths)  # 15 C
        self.head = nn.Sequential(
            nn.Conv2d(head_channels, head_channels, 1), nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, num_classes, 1))
        self.stride = 32

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.stride)
        streams = self.backbone(x)
        high = streams[0].shape[-2:]
        features = torch.cat([streams[0]] + [F.interpolate(s, size=high, mode="bilinear", align_corners=False)
                                             for s in streams[1:]], dim=1)
        logits = F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return crop_to(logits, size)


_PAPER = "Sun et al., High-Resolution Representations for Labeling Pixels and Regions, 2019, arXiv:1904.04514"


@register("hrnetv2_w18", paper=_PAPER)
def hrnetv2_w18(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
                upsample_mode: UpsampleMode = "bilinear") -> HRNetV2:
    """HRNetV2-W18 (stream widths 18, 36, 72, 144); ``encoder_weights`` as for timm's ``hrnet_w18``."""
    return HRNetV2(num_classes, in_channels, width=18, encoder_weights=encoder_weights,
                   upsample_mode=upsample_mode)


@register("hrnetv2_w48", paper=_PAPER)
def hrnetv2_w48(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
                upsample_mode: UpsampleMode = "bilinear") -> HRNetV2:
    """HRNetV2-W48 (stream widths 48, 96, 192, 384); ``encoder_weights`` as for timm's ``hrnet_w48``."""
    return HRNetV2(num_classes, in_channels, width=48, encoder_weights=encoder_weights,
                   upsample_mode=upsample_mode)
