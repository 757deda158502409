"""DeepLab v3+ (Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous Separable Convolution
for Semantic Image Segmentation", ECCV 2018, arXiv:1802.02611).

The one idea: use DeepLab v3 as the *encoder* of an encoder-decoder — its ASPP output (stride 16) is
upsampled 4x and concatenated with the stride-4 low-level features of the backbone, first reduced to 48
channels by a 1x1 conv so they do not outweigh the semantic features; two 3x3 convolutions (256) refine
the fusion before the classifier and a last 4x bilinear upsampling. Depthwise-separable convolutions in
the ASPP and the decoder (``separable=True``, the paper's choice) make it cheaper; the paper's best
backbone is the modified aligned Xception-65 (timm ``xception65``), ResNet-101 is the other. Trained at
output stride 16, it can be evaluated at 8 with ``model.set_output_stride(8)`` (same weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel, record_output_stride
from .encoders.atrous import atrous_encoder, rebuilt_at_output_stride
from .modules.blocks import ConvBnAct
from .modules.context import AtrousSpatialPyramidPooling, conv3x3_block, scaled_rates, set_aspp_rates
from .registry import register


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse the upsampled ASPP features with 48-channel low-level features; two 3x3 convs refine them."""

    def __init__(self, low_level_channels: int, aspp_channels: int, *, low_level_reduced: int = 48,
                 channels: int = 256, separable: bool = True) -> None:
        super().__init__()
        self.reduce = ConvBnAct(low_level_channels, low_level_reduced, 1)
        self.refine = nn.Sequential(
            conv3x3_block(aspp_channels + low_level_reduced, channels, separable=separable),
            conv3x3_block(channels, channels, separable=separable))

    def forward(self, aspp_features: Tensor, low_level: Tensor) -> Tensor:
        upsampled = F.interpolate(aspp_features, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(torch.cat([upsampled, self.reduce(low_level)], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3 encoder (atrous backbone + ASPP) + a decoder on the stride-4 features."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "xception65",
                 encoder_weights: str | None = None, output_stride: int = 16,
                 rates: Sequence[int] = (6, 12, 18), multi_grid: Sequence[int] | None = None,
                 separable: bool = True, aspp_channels: int = 256, low_level_channels: int = 48,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.output_stride, self.base_rates, self.multi_grid = output_stride, tuple(rates), multi_grid
        self.encoder = atrous_encoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                      output_stride=output_stride, multi_grid=multi_grid)
        if 4 not in self.encoder.reductions:
            raise PixelsegError(f"DeepLab v3+ needs stride-4 features; encoder '{encoder}' has strides "
                                f"{self.encoder.reductions}")
        self.low_level_index = self.encoder.reductions.index(4)
        self.aspp = AtrousSpatialPyramidPooling(self.encoder.channels[-1], aspp_channels,
                                                scaled_rates(rates, output_stride), separable=separable,
                                                dropout=dropout)
        self.decoder = DeepLabV3PlusDecoder(self.encoder.channels[self.low_level_index], aspp_channels,
                                            low_level_reduced=low_level_channels, channels=aspp_channels,
                                            separable=separable)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def set_output_stride(self, output_stride: int) -> None:
        """Evaluate at another output stride with the same weights (the paper trains at 16, tests at 8)."""
        self.encoder = rebuilt_at_output_stride(self.encoder, output_stride, self.multi_grid)
        set_aspp_rates(self.aspp, scaled_rates(self.base_rates, output_stride))
        self.output_stride = output_stride
        record_output_stride(self, output_stride)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        fused = self.decoder(self.aspp(features[-1]), features[self.low_level_index])
        return F.interpolate(self.classifier(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("deeplabv3plus", paper="Chen et al., Encoder-Decoder with Atrous Separable Convolution for Semantic "
                                 "Image Segmentation (DeepLab v3+), ECCV 2018, arXiv:1802.02611")
def deeplabv3plus(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
                  encoder_weights: str | None = None, output_stride: int = 16,
                  rates: Sequence[int] = (6, 12, 18), multi_grid: Sequence[int] | None = None,
                  separable: bool = True, aspp_channels: int = 256, low_level_channels: int = 48,
                  dropout: float = 0.1) -> DeepLabV3Plus:
    return DeepLabV3Plus(num_classes, in_channels, encoder=encoder or "xception65",
                         encoder_weights=encoder_weights, output_stride=output_stride, rates=rates,
                         multi_grid=multi_grid, separable=separable, aspp_channels=aspp_channels,
                         low_level_channels=low_level_channels, dropout=dropout)
