"""U-Net (Ronneberger, Fischer & Brox, 2015, arXiv:1505.04597).

Contracting path: repeated two 3x3 convolutions (unpadded in the paper) + ReLU, then 2x2 max pooling,
doubling the channels from 64 to 1024. Expansive path: a 2x2 up-convolution halving the channels,
concatenation with the centre-cropped feature map of the same level, two 3x3 convolutions. A 1x1
convolution maps the 64 channels to the classes; drop-out (0.5) on the two deepest levels' outputs, "at the
end of the contracting path". With valid convolutions a 572x572 input gives a
388x388 output; ``input_size_for`` tells predictors how much mirrored context to add (overlap-tile).

``padding="same"`` keeps the output the size of the input; ``encoder="resnet34"`` (any timm name) swaps
the contracting path for a timm backbone with the same U-shaped decoder. ``upsampling`` replaces the 2x2
up-convolution with another operator of ``models.modules.upsampling`` (nearest, bed_of_nails, bilinear,
resize_conv; the parameter-free ones followed by a 1x1 convolution that halves the channels).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel
from .encoders.timm import TimmEncoder
from .modules.blocks import center_crop_to, crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional batch norm and) ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """2x2 up-convolution (or another ``upsampling`` operator), crop-and-concatenate with the skip
    features, two 3x3 convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, padding: int,
                 batch_norm: bool, upsampling: str = "transposed") -> None:
        super().__init__()
        if check_upsampling(upsampling) == "max_unpool":
            raise ValueError("U-Net cannot upsample by max-unpooling: its decoder input has twice the "
                             "channels of the pooled map whose indices it would need (use SegNet)")
        # The paper's 2x2 up-convolution stays a bare ConvTranspose2d (the checkpoint layout of 'up').
        self.up = (nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
                   if upsampling == "transposed" else make_upsample(upsampling, in_channels, out_channels, 2))
        self.conv = DoubleConv(out_channels + skip_channels, out_channels, padding=padding,
                               batch_norm=batch_norm)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.up(x)
        if skip is None:  # a decoder step below the encoder's first stride has nothing to concatenate
            return self.conv(x)
        skip = center_crop_to(skip, tuple(x.shape[-2:]))
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(SegmentationModel):
    """The paper's U-Net: ``depth`` poolings, ``base_channels`` doubling per level."""

    def __init__(self, num_classes: int, in_channels: int = 1, *, base_channels: int = 64, depth: int = 4,
                 padding: Literal["valid", "same"] = "valid", batch_norm: bool = False,
                 upsampling: str = "transposed", dropout: float = 0.5) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', not {padding!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout!r}")
        pad = 1 if padding == "same" else 0
        self.padding, self.depth = padding, depth
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0], padding=pad, batch_norm=batch_norm)
        self.downs = nn.ModuleList(
            DoubleConv(widths[i], widths[i + 1], padding=pad, batch_norm=batch_norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        # "Drop-out layers at the end of the contracting path": the authors' Caffe model drops out the
        # outputs of the two deepest levels (512 and 1024 channels), for the skip and the path down alike.
        self.dropout = nn.Dropout(dropout)
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], padding=pad, batch_norm=batch_norm, upsampling=upsampling)
            for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "same":
            x, size = pad_to_multiple(x, 2**self.depth, mode="reflect" if min(x.shape[-2:]) > 1 else "constant")
        elif not (torch.jit.is_tracing() or torch.compiler.is_exporting()):  # a Python check of the sizes
            for side in x.shape[-2:]:
                self.output_size(int(side))
        skips = [self.inc(x)]
        for level, down in enumerate(self.downs, start=1):
            features = down(self.pool(skips[-1]))
            skips.append(self.dropout(features) if level >= self.depth - 1 else features)
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        logits = self.head(y)
        return crop_to(logits, size) if self.padding == "same" else logits

    # ---- valid convolutions: sizes for overlap-tile ----------------------------------------------------
    def output_size(self, input_size: int) -> int:
        """Output side for an input side (valid mode); 572 → 388 for the paper's network."""
        size = input_size
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                smallest = self._input_side_for(1)
                raise PixelsegError(f"input side {input_size} does not fit a valid U-Net of depth {self.depth} "
                                    f"(sides of the form {smallest} + {2**self.depth}k fit; or use padding='same')")
            size //= 2
        size -= 4
        for _ in range(self.depth):
            size = size * 2 - 4
        if size <= 0:
            raise PixelsegError(f"input side {input_size} is too small for a valid U-Net "
                                f"(at least {self._input_side_for(1)})")
        return size

    def _input_side_for(self, output_side: int) -> int:
        if self.padding == "same":
            return output_side
        # The bottleneck side b gives output 2^d (b) - 4 (2^(d+1) - 4) ... solve for the smallest valid b.
        scale = 2**self.depth
        shrink_up = 4 * (scale - 1)  # 60 for depth 4
        bottom = max(1, math.ceil((output_side + shrink_up) / scale))
        side = bottom + 4
        for _ in range(self.depth):
            side = side * 2 + 4
        return side

    def input_size_for(self, output_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.padding == "same":
            return output_size, (0, 0)
        sides = tuple(self._input_side_for(s) for s in output_size)
        margin = (sides[0] - self.output_size(sides[0])) // 2
        return sides, (margin, margin)


class EncoderUNet(SegmentationModel):
    """U-Net decoder on a timm encoder: at each stride, 2x2 up-convolution, concatenation, two convs."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet34",
                 encoder_weights: str | None = None,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16), upsampling: str = "transposed") -> None:
        super().__init__()
        self.encoder = TimmEncoder(encoder, in_channels=in_channels, weights=encoder_weights)
        channels, reductions = self.encoder.channels, self.encoder.reductions
        self.stride = reductions[-1]
        skips = list(reversed(channels[:-1]))
        skip_reductions = list(reversed(reductions[:-1]))
        blocks, previous, reduction = [], channels[-1], reductions[-1]
        self.skip_of_block: list[bool] = []  # decided here from the reductions, never from traced sizes
        for i, out_channels in enumerate(decoder_channels):
            reduction //= 2
            if reduction < 1:
                break
            has_skip = i < len(skips) and skip_reductions[i] == reduction
            blocks.append(Up(previous, skips[i] if has_skip else 0, out_channels, padding=1, batch_norm=True,
                             upsampling=upsampling))
            self.skip_of_block.append(has_skip)
            previous = out_channels
        self.output_reduction = reduction if blocks else reductions[-1]
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(previous, num_classes, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.stride)
        features = self.encoder(x)
        y = features[-1]
        skips = list(reversed(features[:-1]))
        for i, (block, has_skip) in enumerate(zip(self.decoder, self.skip_of_block, strict=True)):
            y = block(y, skips[i] if has_skip else None)
        logits = self.head(y)
        if self.output_reduction > 1:  # fewer decoder blocks than the encoder's reductions
            logits = nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return crop_to(logits, size)


@register("unet", paper="Ronneberger et al., U-Net, MICCAI 2015, arXiv:1505.04597")
def unet(num_classes: int, in_channels: int = 1, *, encoder: str | None = None,
         encoder_weights: str | None = None, **kwargs) -> SegmentationModel:
    """The paper's U-Net by default (valid convs, 64 channels); with ``encoder`` a timm-encoder U-Net."""
    if encoder is None:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs an encoder (the paper U-Net is trained from scratch)")
        return UNet(num_classes, in_channels, **kwargs)
    return EncoderUNet(num_classes, in_channels, encoder=encoder, encoder_weights=encoder_weights, **kwargs)
