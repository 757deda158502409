"""TernausNet (Iglovikov & Shvets, "TernausNet: U-Net with VGG11 Encoder Pre-Trained on ImageNet for
Image Segmentation", 2018, arXiv:1801.05746).

The one idea: a U-Net whose contracting path is VGG11 (its 8 convolutions, no fully connected layers),
so that it can start from ImageNet weights; the paper shows that pre-training speeds up convergence and
improves the result (Inria aerial image labeling, Carvana).

Layers, as in the authors' ``UNet11`` with ``num_filters=32``: the five VGG11 stages (64 | 128 | 256,
256 | 512, 512 | 512, 512, 3x3 convolutions with ReLU, 2x2 max-pooling); a centre block on the fifth
pooled map; then five decoder steps. A decoder block is a 3x3 convolution with ReLU followed by a 3x3
transposed convolution with stride 2 and ReLU (centre: 512 → 512 → 256; then, on the concatenation with
the encoder map of the same size, 768 → 512 → 256, 768 → 512 → 128, 384 → 256 → 64, 192 → 128 → 32); the
last step is a 3x3 convolution (96 → 32) and a 1x1 convolution gives the class scores. 22.93M parameters
for 3 input channels and one output.

``encoder_weights`` loads timm's ImageNet ``vgg11`` (``"imagenet"`` or a local safetensors file with its
state dict). ``upsampling`` swaps the transposed convolutions for any operator of
``pixelseg.models.modules.upsampling`` but ``max_unpool``. Any input size is zero-padded to a multiple of 32 and
the output cropped back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel
from .encoders.vgg import VGG11_STAGE_DEPTHS, vgg11
from .modules.blocks import ConvBnAct, crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register


class DecoderBlock(nn.Module):
    """3x3 convolution + ReLU, then 2x upsampling (3x3 transposed convolution, stride 2) + ReLU."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int, upsampling: str) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_channels, middle_channels, 3, batch_norm=False)
        self.up = make_upsample(upsampling, middle_channels, out_channels,
                                kernel_size=3 if upsampling == "transposed" else None)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.activation(self.up(self.conv(x), output_size=output_size))


class TernausNet(SegmentationModel):
    """U-Net with a VGG11 encoder (``UNet11``)."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, base_channels: int = 64,
                 num_filters: int = 32, upsampling: str = "transposed",
                 encoder_weights: str | None = None) -> None:
        super().__init__()
        if check_upsampling(upsampling) == "max_unpool":
            raise PixelsegError("TernausNet cannot use max_unpool: its decoder maps have no pooling indices")
        self.stride = 2 ** len(VGG11_STAGE_DEPTHS)
        self.encoder = vgg11(in_channels, base_channels=base_channels)
        if encoder_weights is not None:
            self.encoder.load_timm_vgg("vgg11", encoder_weights)
        skips = self.encoder.widths  # 64, 128, 256, 512, 512
        f = num_filters
        self.center = DecoderBlock(skips[4], 16 * f, 8 * f, upsampling)
        self.decoder = nn.ModuleList([
            DecoderBlock(skips[4] + 8 * f, 16 * f, 8 * f, upsampling),
            DecoderBlock(skips[3] + 8 * f, 16 * f, 4 * f, upsampling),
            DecoderBlock(skips[2] + 4 * f, 8 * f, 2 * f, upsampling),
            DecoderBlock(skips[1] + 2 * f, 4 * f, f, upsampling),
        ])
        self.last = ConvBnAct(skips[0] + f, f, 3, batch_norm=False)
        self.head = nn.Conv2d(f, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.stride)
        stages = self.encoder(x)
        skips = [features for features, _, _ in stages]
        y = self.center(stages[-1][1], output_size=tuple(skips[-1].shape[-2:]))
        for block, skip, next_skip in zip(self.decoder, reversed(skips[1:]), reversed(skips[:-1]), strict=True):
            y = block(torch.cat([y, skip], dim=1), output_size=tuple(next_skip.shape[-2:]))
        y = self.last(torch.cat([y, skips[0]], dim=1))
        return crop_to(self.head(y), size)


@register("ternausnet", paper="Iglovikov & Shvets, TernausNet: U-Net with VGG11 Encoder, 2018, "
                              "arXiv:1801.05746")
def ternausnet(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
               **kwargs) -> TernausNet:
    """The authors' UNet11: VGG11 encoder (pretrainable from timm ``vgg11``), num_filters 32."""
    return TernausNet(num_classes, in_channels, encoder_weights=encoder_weights, **kwargs)
