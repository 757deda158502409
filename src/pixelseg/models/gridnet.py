"""GridNet (Fourure, Emonet, Fromont, Muselet, Trémeau & Wolf, "Residual Conv-Deconv Grid Network for
Semantic Segmentation", BMVC 2017, arXiv:1707.07958).

The one idea: instead of one stream that loses resolution as it goes, a GRID of streams, one per
resolution (rows), all running from input to output. Along a row, residual blocks keep the resolution and
width; between rows, strided-convolution blocks go down (half the size, twice the channels) in the first
half of the columns and transposed-convolution blocks go up in the second half. Every grid node sums its
incoming connections. Conv-deconv nets, U-Net and FRRN are paths through such a grid (Fig. 3). Because
the shortest path runs along the full-resolution row only, "total dropout" switches off whole residual
blocks at random during training so that the low-resolution streams get used too (Fig. 4).

The configuration is the authors' reference implementation (``GridNet.lua``, ``train.lua``): five rows
with 16, 32, 64, 128, 256 feature maps, three down-sampling columns and three up-sampling columns.
All blocks are pre-activation (BN → ReLU → 3x3 conv → BN → ReLU → 3x3 conv, Fig. 2):

- input: batch norm on the image, then two 3x3 conv + BN + ReLU to the first row's 16 maps;
- column 1 only sub-samples (row s gets the strided block of row s-1); columns 2 and 3 add, on every row,
  a residual block of the previous column and a strided block from the row above;
- the up-sampling half has three columns; on every row a residual block (followed by total dropout) plus
  an up-sampling block (3x3 transposed convolution, stride 2) from the row below;
- output: two 3x3 (de)convolutions 16 → classes → classes with batch norm, as in the reference.

Total dropout: each residual block's output is zeroed for a whole sample with probability
``total_dropout`` during training (identity at evaluation). The reference code's default is 0.1.
The reference uses transposed convolutions with stride 1 in the residual blocks of the up-sampling half;
those compute the same function family as convolutions with the same parameter count, so plain
convolutions are used here. ``upsampling`` selects another operator of ``upsampling.py`` for the
up-sampling blocks. Inputs are padded to a multiple of 2^(rows-1) and the logits cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import SegmentationModel
from .modules.blocks import crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register

GRIDNET_CHANNELS = (16, 32, 64, 128, 256)


class TotalDropout(nn.Module):
    """Zeroes the whole input of a sample with probability ``p`` in training; the identity otherwise.

    As in the reference (dpnn's ``TotalDropout``) the kept inputs are not rescaled.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"total dropout probability must be in [0, 1), not {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class ResidualUnit(nn.Sequential):
    """Green unit: BN-ReLU-conv3x3-BN-ReLU-conv3x3, then total dropout (the caller adds the identity)."""

    def __init__(self, channels: int, total_dropout: float) -> None:
        super().__init__(*_bn_relu(channels), nn.Conv2d(channels, channels, 3, padding=1),
                         *_bn_relu(channels), nn.Conv2d(channels, channels, 3, padding=1),
                         TotalDropout(total_dropout))


class SubsamplingUnit(nn.Sequential):
    """Red unit: BN-ReLU-conv3x3 stride 2 (channels doubled)-BN-ReLU-conv3x3."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(*_bn_relu(in_channels), nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
                         *_bn_relu(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1))


class UpsamplingUnit(nn.Module):
    """Yellow unit: BN-ReLU-deconv3x3 stride 2 (channels halved)-BN-ReLU-conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, upsampling: str = "transposed") -> None:
        super().__init__()
        if check_upsampling(upsampling) == "max_unpool":
            raise ValueError("GridNet has no max-pooling indices to unpool with; choose another upsampling")
        self.pre = nn.Sequential(*_bn_relu(in_channels))
        self.up = make_upsample(upsampling, in_channels, out_channels, 2,
                                kernel_size=3 if upsampling in ("transposed", "resize_conv") else None)
        self.post = nn.Sequential(*_bn_relu(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1))

    def forward(self, x: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.post(self.up(self.pre(x), output_size=output_size))


class GridNet(SegmentationModel):
    """A grid of ``len(channels)`` residual streams, ``columns`` down-sampling and ``columns`` up-sampling
    columns; the defaults are the paper's (16…256 maps, 3 + 3 columns)."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, channels: Sequence[int] = GRIDNET_CHANNELS,
                 columns: int = 3, total_dropout: float = 0.1, upsampling: str = "transposed") -> None:
        super().__init__()
        channels = list(channels)
        if len(channels) < 2 or columns < 2:
            raise ValueError("GridNet needs at least 2 rows and 2 columns per half")
        self.rows, self.columns = len(channels), columns
        self.input_norm = nn.BatchNorm2d(in_channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1), *_bn_relu(channels[0]),
                                  nn.Conv2d(channels[0], channels[0], 3, padding=1), *_bn_relu(channels[0]))
        # down[c][s-1]: row s-1 → s in down-sampling column c; lateral[c][s]: residual unit on row s.
        self.down = nn.ModuleList(
            nn.ModuleList(SubsamplingUnit(channels[s - 1], channels[s]) for s in range(1, self.rows))
            for _ in range(columns))
        self.down_lateral = nn.ModuleList(
            nn.ModuleList(ResidualUnit(c, total_dropout) for c in channels) for _ in range(columns - 1))
        self.up = nn.ModuleList(
            nn.ModuleList(UpsamplingUnit(channels[s + 1], channels[s], upsampling) for s in range(self.rows - 1))
            for _ in range(columns))
        self.up_lateral = nn.ModuleList(
            nn.ModuleList(ResidualUnit(c, total_dropout) for c in channels) for _ in range(columns))
        self.head = nn.Sequential(nn.Conv2d(channels[0], num_classes, 3, padding=1), *_bn_relu(num_classes),
                                  nn.Conv2d(num_classes, num_classes, 3, padding=1), nn.BatchNorm2d(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, 2 ** (self.rows - 1))
        # First column: the stem, then sub-sampling only.
        streams = [self.stem(self.input_norm(x))]
        for s in range(1, self.rows):
            streams.append(self.down[0][s - 1](streams[s - 1]))
        # Down-sampling columns 2..n: residual along each row + strided block from the row above.
        for column in range(1, self.columns):
            lateral = self.down_lateral[column - 1]
            new = [streams[0] + lateral[0](streams[0])]
            for s in range(1, self.rows):
                new.append(streams[s] + lateral[s](streams[s]) + self.down[column][s - 1](new[s - 1]))
            streams = new
        # Up-sampling columns: residual along each row + up-sampling block from the row below.
        for column in range(self.columns):
            lateral = self.up_lateral[column]
            new = [None] * self.rows
            new[-1] = streams[-1] + lateral[-1](streams[-1])
            for s in reversed(range(self.rows - 1)):
                up = self.up[column][s](new[s + 1], tuple(streams[s].shape[-2:]))
                new[s] = streams[s] + lateral[s](streams[s]) + up
            streams = new
        return crop_to(self.head(streams[0]), size)


@register("gridnet", paper="Fourure et al., Residual Conv-Deconv Grid Network, BMVC 2017, arXiv:1707.07958")
def gridnet(num_classes: int, in_channels: int = 3, **kwargs) -> GridNet:
    """The paper's GridNet: 5 rows (16…256 maps), 3 down-sampling + 3 up-sampling columns."""
    return GridNet(num_classes, in_channels, **kwargs)
