"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA 2018, arXiv:1807.10165).

The one idea: replace U-Net's plain skip connections by *nested, dense skip pathways*. Node ``X[i, j]``
(level ``i`` = resolution 1/2^i, column ``j``) is a convolution block fed the concatenation of all
earlier nodes of its level, ``X[i, 0] ... X[i, j-1]``, and the upsampled node below, ``X[i+1, j-1]``, so
that encoder features reach the decoder through a stack of convolutions that bridges their semantic gap.

Every ``X[0, j]`` has its own 1x1 segmentation head. With *deep supervision* (the default) training puts
the loss on all of them (``SegmentationOutput``: main output ``X[0, 4]``, the other heads with weight 1).
At inference the model runs in the paper's "accurate mode" (the heads' logits averaged) or is *pruned*
to depth ``d`` in 1..4 (``prune(d)`` / ``inference_depth=d``): only the nodes with ``i + j <= d`` are
computed and the head of ``X[0, d]`` gives the output: exactly the sub-network UNet++ L_d.

Configuration as in the authors' Keras code: filters (32, 64, 128, 256, 512); a block is two 3x3
convolutions with ReLU, each followed by dropout 0.5; upsampling by 2x2 transposed convolutions
(``upsampling=`` takes any operator of ``pixelseg.models.modules.upsampling`` but ``max_unpool``). For one input
channel and one output it has 9,041,700 parameters with its four heads (the paper: 9.04M).

``unet_baseline_zhou`` builds the paper's U-Net baseline with the same blocks and filters (only
``X[i, 0]`` and ``X[i, 4-i]``, plain skips): 7,759,521 parameters (the paper: 7.76M).

Any input size is zero-padded to a multiple of 2^depth and the output cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel, SegmentationOutput
from .modules.blocks import crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register


class ConvBlock(nn.Sequential):
    """The authors' ``standard_unit``: two 3x3 convolutions, each with ReLU and dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Dropout2d(dropout),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Dropout2d(dropout))


class UNetPlusPlus(SegmentationModel):
    """Nested U-Net with dense skip pathways, deep supervision and depth pruning.

    ``nested=False`` keeps only the plain U-Net nodes (the paper's U-Net baseline).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, *,
                 filters: Sequence[int] = (32, 64, 128, 256, 512), deep_supervision: bool = True,
                 nested: bool = True, dropout: float = 0.5, upsampling: str = "transposed",
                 inference_depth: int | None = None) -> None:
        super().__init__()
        if check_upsampling(upsampling) == "max_unpool":
            raise PixelsegError("UNet++ cannot use max_unpool: its upsampled nodes have no pooling indices")
        if deep_supervision and not nested:
            raise ValueError("deep supervision needs the nested nodes X[0, j]; the U-Net baseline has one head")
        self.depth = len(filters) - 1
        self.filters, self.nested, self.deep_supervision = tuple(filters), nested, deep_supervision
        self.nodes, self.ups = nn.ModuleDict(), nn.ModuleDict()
        for i, (channels_in, width) in enumerate(zip((in_channels, *filters[:-1]), filters, strict=True)):
            self.nodes[f"x_{i}_0"] = ConvBlock(channels_in, width, dropout)
        for i, j in self.decoder_nodes(self.depth):
            self.ups[f"up_{i}_{j}"] = make_upsample(upsampling, filters[i + 1], filters[i])
            inputs = len(self.same_level_inputs(i, j)) + 1
            self.nodes[f"x_{i}_{j}"] = ConvBlock(inputs * filters[i], filters[i], dropout)
        head_columns = range(1, self.depth + 1) if deep_supervision else [self.depth]
        self.heads = nn.ModuleDict({f"head_{j}": nn.Conv2d(filters[0], num_classes, 1) for j in head_columns})
        self.pool = nn.MaxPool2d(2)
        self.inference_depth: int | None = None
        if inference_depth is not None:
            self.prune(inference_depth)

    def decoder_nodes(self, depth: int) -> list[tuple[int, int]]:
        """Nodes ``(i, j)``, ``j >= 1``, of the network pruned to ``depth``, in computation order."""
        if self.nested:
            return [(i, j) for j in range(1, depth + 1) for i in range(depth - j + 1)]
        return [(i, self.depth - i) for i in reversed(range(self.depth))]

    def same_level_inputs(self, i: int, j: int) -> list[tuple[int, int]]:
        """The earlier nodes of level ``i`` that feed ``X[i, j]``: all of them, or only ``X[i, 0]``."""
        return [(i, k) for k in range(j)] if self.nested else [(i, 0)]

    def prune(self, depth: int | None) -> UNetPlusPlus:
        """Run inference as UNet++ L_depth (1..4), or the whole network with ``None``."""
        if depth is not None:
            if not self.deep_supervision:
                raise ValueError("pruning needs the heads of deep supervision (deep_supervision=True)")
            if not 1 <= depth <= self.depth:
                raise ValueError(f"prune depth must be between 1 and {self.depth}, not {depth}")
        self.inference_depth = depth
        return self

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        depth = self.depth if self.training or self.inference_depth is None else self.inference_depth
        x, size = pad_to_multiple(x, 2**depth)
        nodes = {(0, 0): self.nodes["x_0_0"](x)}
        for i in range(1, depth + 1):
            nodes[(i, 0)] = self.nodes[f"x_{i}_0"](self.pool(nodes[(i - 1, 0)]))
        for i, j in self.decoder_nodes(depth):
            level_size = tuple(nodes[(i, 0)].shape[-2:])
            upsampled = self.ups[f"up_{i}_{j}"](nodes[(i + 1, j - 1)], output_size=level_size)
            inputs = [upsampled, *(nodes[node] for node in self.same_level_inputs(i, j))]
            nodes[(i, j)] = self.nodes[f"x_{i}_{j}"](torch.cat(inputs, dim=1))
        if not self.deep_supervision:
            return crop_to(self.heads[f"head_{depth}"](nodes[(0, depth)]), size)
        logits = [crop_to(self.heads[f"head_{j}"](nodes[(0, j)]), size) for j in range(1, depth + 1)]
        if self.training:
            return SegmentationOutput(out=logits[-1], aux=logits[:-1], aux_weights=[1.0] * (depth - 1))
        if self.inference_depth is not None:
            return logits[-1]  # fast mode: the pruned network's own head
        return torch.stack(logits).mean(dim=0)  # accurate mode: all heads averaged


_PAPER = "Zhou et al., UNet++: A Nested U-Net Architecture, DLMIA 2018, arXiv:1807.10165"


@register("unetplusplus", paper=_PAPER)
def unetplusplus(num_classes: int, in_channels: int = 1, **kwargs) -> UNetPlusPlus:
    """The paper's UNet++ with deep supervision (filters 32..512, 2x2 transposed convolutions)."""
    return UNetPlusPlus(num_classes, in_channels, **kwargs)


@register("unet_baseline_zhou", paper=_PAPER + " (its U-Net baseline)")
def unet_baseline_zhou(num_classes: int, in_channels: int = 1, **kwargs) -> UNetPlusPlus:
    """UNet++'s U-Net baseline: the same blocks and filters, plain skip connections (7.76M parameters)."""
    return UNetPlusPlus(num_classes, in_channels, **{"nested": False, "deep_supervision": False, **kwargs})
