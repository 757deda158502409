"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jégou, Drozdzal, Vazquez, Romero & Bengio, CVPR
Workshops 2017, arXiv:1611.09326).

The one idea: DenseNet's dense blocks (every layer sees the concatenation of all earlier feature maps
of its block) as the stages of a U-shaped network. To keep the upsampling path affordable, a transition
up only upsamples the feature maps *created* by the previous dense block, not their whole concatenated
input; the skip connection then brings the encoder's full map of that resolution back.

Building blocks (the paper's Table 1): layer = BN, ReLU, 3x3 convolution (``growth_rate`` maps), dropout
0.2; transition down = BN, ReLU, 1x1 convolution, dropout 0.2, 2x2 max-pooling; transition up = 3x3
transposed convolution with stride 2. A 3x3 convolution with 48 maps starts the network, a 1x1
convolution ends it.

Configurations (layers per dense block, down path, bottleneck, up path mirrored; growth rate):

* ``fc_densenet56``: 4 layers in every block, growth 12;
* ``fc_densenet67``: 5 layers in every block, growth 16;
* ``fc_densenet103``: 4, 5, 7, 10, 12 | 15 | 12, 10, 7, 5, 4, growth 16.

Parameter counts for 11 classes (CamVid) against the paper's Table 2: FC-DenseNet103 has 9.32M (paper
9.4M), FC-DenseNet67 3.46M (paper 3.5M). FC-DenseNet56 has 1.38M where the paper says 1.5M: the
paper's layer table (4 layers per block, growth 12, 48 initial maps) implies 1.38M, and its rounded
figure does not follow from it; we build the table's network (see docs/models-encoder-decoder-a.md).

Any input size: zero-padded to a multiple of 32, cropped back. ``upsampling`` swaps the transposed
convolution of the transitions up for another operator of ``pixelseg.models.modules.upsampling`` (all but
``max_unpool``: the upsampled maps are not the pooled ones, so there are no indices for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel
from .modules.blocks import crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register


class BnReluConvDropout(nn.Sequential):
    """The dense layer and the transition down's convolution: BN, ReLU, convolution, dropout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                         nn.Dropout2d(dropout))


class DenseBlock(nn.Module):
    """``num_layers`` layers, each fed the concatenation of the block input and all earlier outputs.

    ``forward`` returns the block input concatenated with the new maps, and the new maps alone.
    """

    def __init__(self, in_channels: int, num_layers: int, growth_rate: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BnReluConvDropout(in_channels + i * growth_rate, growth_rate, 3, dropout) for i in range(num_layers))
        self.new_channels = num_layers * growth_rate

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        new_maps: list[Tensor] = []
        for layer in self.layers:
            new_maps.append(layer(torch.cat([x, *new_maps], dim=1)))
        new = torch.cat(new_maps, dim=1)
        return torch.cat([x, new], dim=1), new


class TransitionDown(nn.Sequential):
    """BN, ReLU, 1x1 convolution, dropout, 2x2 max-pooling."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(BnReluConvDropout(channels, channels, 1, dropout), nn.MaxPool2d(2))


class FCDenseNet(SegmentationModel):
    """Dense blocks down, a bottleneck dense block, dense blocks up; skips concatenate."""

    def __init__(self, num_classes: int, in_channels: int = 3, *,
                 down_layers: Sequence[int] = (4, 5, 7, 10, 12), bottleneck_layers: int = 15,
                 growth_rate: int = 16, first_channels: int = 48, dropout: float = 0.2,
                 upsampling: str = "transposed") -> None:
        super().__init__()
        if check_upsampling(upsampling) == "max_unpool":
            raise PixelsegError("FC-DenseNet cannot use max_unpool: its transitions up upsample new feature maps, "
                             "which have no pooling indices")
        self.stride = 2 ** len(down_layers)
        self.first_conv = nn.Conv2d(in_channels, first_channels, 3, padding=1)
        channels = first_channels
        self.down_blocks, self.transitions_down, skip_channels = nn.ModuleList(), nn.ModuleList(), []
        for num_layers in down_layers:
            block = DenseBlock(channels, num_layers, growth_rate, dropout)
            channels += block.new_channels
            skip_channels.append(channels)
            self.down_blocks.append(block)
            self.transitions_down.append(TransitionDown(channels, dropout))
        self.bottleneck = DenseBlock(channels, bottleneck_layers, growth_rate, dropout)
        upsampled = self.bottleneck.new_channels
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for num_layers, skip in zip(reversed(down_layers), reversed(skip_channels), strict=True):
            self.transitions_up.append(make_upsample(upsampling, upsampled, upsampled,
                                                     kernel_size=3 if upsampling == "transposed" else None))
            block = DenseBlock(upsampled + skip, num_layers, growth_rate, dropout)
            self.up_blocks.append(block)
            channels = upsampled + skip + block.new_channels
            upsampled = block.new_channels
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.stride)
        y = self.first_conv(x)
        skips = []
        for block, transition in zip(self.down_blocks, self.transitions_down, strict=True):
            y, _ = block(y)
            skips.append(y)
            y = transition(y)
        _, new = self.bottleneck(y)
        for transition, block in zip(self.transitions_up, self.up_blocks, strict=True):
            skip = skips.pop()
            y, new = block(torch.cat([transition(new, output_size=tuple(skip.shape[-2:])), skip], dim=1))
        return crop_to(self.classifier(y), size)


_PAPER = "Jégou et al., The One Hundred Layers Tiramisu: FC-DenseNets, CVPRW 2017, arXiv:1611.09326"


@register("fc_densenet103", paper=_PAPER)
def fc_densenet103(num_classes: int, in_channels: int = 3, **kwargs) -> FCDenseNet:
    """FC-DenseNet103: blocks 4, 5, 7, 10, 12 | 15 | 12, 10, 7, 5, 4; growth rate 16 (9.3M parameters)."""
    return FCDenseNet(num_classes, in_channels, **{"down_layers": (4, 5, 7, 10, 12), "bottleneck_layers": 15,
                                                    "growth_rate": 16, **kwargs})


@register("fc_densenet67", paper=_PAPER)
def fc_densenet67(num_classes: int, in_channels: int = 3, **kwargs) -> FCDenseNet:
    """FC-DenseNet67: 5 layers per dense block, growth rate 16 (3.5M parameters)."""
    return FCDenseNet(num_classes, in_channels, **{"down_layers": (5,) * 5, "bottleneck_layers": 5,
                                                    "growth_rate": 16, **kwargs})


@register("fc_densenet56", paper=_PAPER)
def fc_densenet56(num_classes: int, in_channels: int = 3, **kwargs) -> FCDenseNet:
    """FC-DenseNet56: 4 layers per dense block, growth rate 12 (1.38M by the layer table; paper: 1.5M)."""
    return FCDenseNet(num_classes, in_channels, **{"down_layers": (4,) * 5, "bottleneck_layers": 4,
                                                    "growth_rate": 12, **kwargs})
