"""Atrous (dilated) backbones: a timm encoder whose last stages trade stride for dilation.

DeepLab v2 (arXiv:1606.00915), DeepLab v3 (arXiv:1706.05587), DeepLab v3+ (arXiv:1802.02611) and PSPNet
(arXiv:1612.01105) all read the features of a ResNet at output stride 8 or 16: the strides of the last
one or two stages are removed and their 3x3 convolutions dilated instead, so the receptive field stays
that of the original network. DeepLab v3 adds "multi-grid": the units of the last stage get the dilation
``stage_rate * unit_rates[i]`` (unit rates (1, 2, 4) in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import PixelsegError
from .timm import TimmEncoder


def apply_multi_grid(encoder: TimmEncoder, unit_rates: Sequence[int], output_stride: int) -> None:
    """Set the 3x3 convolutions of the last ResNet stage to dilation ``stage_rate * unit_rates[i]``.

    ``stage_rate`` is the dilation that replaces the stage's stride: 2 at output stride 16, 4 at 8.
    """
    last_stage = getattr(encoder.body, "layer4", None)
    if last_stage is None or not all(hasattr(block, "conv2") for block in last_stage):
        raise PixelsegError(f"multi_grid needs a ResNet-style encoder (layer4 of residual blocks); "
                            f"'{encoder.name}' is not one: pass multi_grid=None")
    stage_rate = 32 // output_stride
    for index, block in enumerate(last_stage):
        rate = stage_rate * unit_rates[index % len(unit_rates)]
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)


def atrous_encoder(name: str, *, in_channels: int, weights: str | None, output_stride: int,
                   multi_grid: Sequence[int] | None = None) -> TimmEncoder:
    """A timm backbone at output stride 8 or 16 (dilated last stages), optionally with multi-grid."""
    if output_stride not in (8, 16):
        raise PixelsegError(f"output_stride must be 8 or 16, not {output_stride}")
    encoder = TimmEncoder(name, in_channels=in_channels, weights=weights, output_stride=output_stride)
    if multi_grid is not None:
        apply_multi_grid(encoder, multi_grid, output_stride)
    return encoder


def rebuilt_at_output_stride(encoder: TimmEncoder, output_stride: int,
                             multi_grid: Sequence[int] | None) -> TimmEncoder:
    """The same backbone with the same weights at another output stride (strides traded for dilation)."""
    body = encoder.body
    first_conv = next(m for m in body.modules() if isinstance(m, nn.Conv2d))
    with torch.device(first_conv.weight.device):
        rebuilt = atrous_encoder(encoder.name, in_channels=first_conv.in_channels, weights=None,
                                 output_stride=output_stride, multi_grid=multi_grid)
    rebuilt.to(dtype=first_conv.weight.dtype).load_state_dict(encoder.state_dict())
    return rebuilt.train(encoder.training)
