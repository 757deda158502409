"""Context blocks shared by the multi-scale models: atrous pyramids, pyramid pooling, separable convs, JPU.

- ``DepthwiseSeparableConv``: a per-channel (depthwise) k x k convolution followed by a 1x1 (pointwise)
  one (Chollet, Xception, CVPR 2017, arXiv:1610.02357); DeepLab v3+ and FastFCN use it.
- ``SummedAtrousPyramid``: DeepLab v2's ASPP (Chen et al., TPAMI 2017, arXiv:1606.00915): parallel
  3x3 convolutions at several atrous rates, each predicting class scores, their outputs *summed*.
- ``AtrousSpatialPyramidPooling``: DeepLab v3's ASPP (Chen et al., 2017, arXiv:1706.05587): a 1x1 branch,
  3x3 atrous branches and an image-level pooling branch, *concatenated* and fused by a 1x1 convolution.
- ``PyramidPoolingModule``: PSPNet's pooling of the feature map into 1x1, 2x2, 3x3 and 6x6 bins (Zhao et
  al., CVPR 2017, arXiv:1612.01105), each reduced by a 1x1 conv, upsampled and concatenated to the input.
- ``JointPyramidUpsampling``: FastFCN's JPU (Wu et al., 2019, arXiv:1903.11816): the last three stages of
  an undilated backbone brought to stride 8 and mixed by separable convolutions at dilations 1, 2, 4, 8,
  which stands in for the dilated convolutions of the backbone.
- ``set_aspp_rates`` and ``scaled_rates``: the ASPP rates at another output stride (DeepLab v3 and v3+
  train at 16 and evaluate at 8 with doubled rates).
- ``ClassifierHead``: 3x3 conv-BN-ReLU, dropout, 1x1 classifier — PSPNet's final head, and the auxiliary
  head that deep supervision puts on an intermediate stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBnAct


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k x k convolution (one filter per channel) then a pointwise 1x1 convolution.

    ``between`` is what sits between the two: ``"none"`` (smp), ``"bn"`` (FastFCN's reference code) or
    ``"bn_relu"`` (DeepLab v3+'s reference code, the MobileNet design). After the pointwise convolution
    come batch norm and ReLU (``activation=False`` leaves out the ReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1,
                 between: str = "bn_relu", activation: bool = True) -> None:
        if between not in ("none", "bn", "bn_relu"):
            raise ValueError(f"between must be 'none', 'bn' or 'bn_relu', not {between!r}")
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding,
                                             dilation=dilation, groups=in_channels, bias=False)]
        if between != "none":
            layers.append(nn.BatchNorm2d(in_channels))
        if between == "bn_relu":
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def conv3x3_block(in_channels: int, out_channels: int, *, dilation: int = 1, separable: bool = False,
                  separable_between: str = "bn_relu") -> nn.Module:
    """A 3x3 conv-BN-ReLU, dense or depthwise-separable, at the given dilation."""
    if separable:
        return DepthwiseSeparableConv(in_channels, out_channels, 3, dilation=dilation,
                                      between=separable_between)
    return ConvBnAct(in_channels, out_channels, 3, dilation=dilation)


class SummedAtrousPyramid(nn.Module):
    """DeepLab v2's ASPP on ResNet: one 3x3 convolution per rate straight to class scores, summed.

    Each branch sees the same features through a different field of view (rates 6, 12, 18, 24 in the
    paper's ASPP-L); the class scores of the branches are added, not concatenated.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in self.rates)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


class ImagePooling(nn.Module):
    """Global average pooling → 1x1 conv-BN-ReLU → broadcast back to the input's size (image context)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = ConvBnAct(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class AtrousSpatialPyramidPooling(nn.Module):
    """DeepLab v3's ASPP: 1x1 branch + 3x3 atrous branches (+ image pooling), concatenated, 1x1 fused.

    Every branch is conv-BN-ReLU with ``out_channels`` (256); the fusion is a 1x1 conv-BN-ReLU followed by
    dropout. ``separable=True`` makes the atrous branches depthwise-separable (DeepLab v3+).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18), *,
                 image_pooling: bool = True, separable: bool = False, separable_between: str = "bn_relu",
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [ConvBnAct(in_channels, out_channels, 1)]
        branches += [conv3x3_block(in_channels, out_channels, dilation=rate, separable=separable,
                                   separable_between=separable_between) for rate in self.rates]
        if image_pooling:
            branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.fuse = nn.Sequential(ConvBnAct(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


def scaled_rates(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """The ASPP rates are given at output stride 16; at output stride 8 they double."""
    return tuple(rate * 16 // output_stride for rate in rates)


def set_aspp_rates(aspp: AtrousSpatialPyramidPooling, rates: Sequence[int]) -> None:
    """Change the dilation of the ASPP's atrous branches in place (their weights do not depend on it)."""
    for branch, rate in zip(aspp.branches[1:1 + len(aspp.rates)], rates, strict=True):
        atrous_conv = branch[0]
        atrous_conv.dilation, atrous_conv.padding = (rate, rate), (rate, rate)
    aspp.rates = tuple(rates)


def adaptive_avg_pool2d(x: Tensor, bins: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, bins)``. Under ``torch.export`` it is written out with PyTorch's bins — bin
    ``i`` of ``n`` over a side ``L`` spans ``floor(i L / n)`` to ``ceil((i + 1) L / n)`` — so that the exported
    graph computes them from the runtime size (the exporter's own decomposition keeps the traced size's)."""
    if bins == 1 or not torch.compiler.is_exporting():
        return F.adaptive_avg_pool2d(x, bins)
    for axis in (x.dim() - 2, x.dim() - 1):
        length = x.shape[axis]
        means = []
        for i in range(bins):
            window = [slice(None)] * x.dim()
            window[axis] = slice(i * length // bins, ((i + 1) * length + bins - 1) // bins)
            means.append(x[tuple(window)].mean(axis, keepdim=True))
        x = torch.cat(means, dim=axis)
    return x


class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: average-pool into each bin grid, 1x1 conv-BN-ReLU to ``in/len(bins)``
    channels, upsample bilinearly and concatenate with the input (output: ``2 * in_channels``)."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 reduction_channels: int | None = None) -> None:
        super().__init__()
        self.bins = tuple(bins)
        reduced = reduction_channels or in_channels // len(self.bins)
        self.stages = nn.ModuleList(ConvBnAct(in_channels, reduced, 1) for _ in self.bins)
        self.out_channels = in_channels + reduced * len(self.bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(adaptive_avg_pool2d(x, bin_size)), size=size, mode="bilinear",
                                align_corners=True)
                  for bin_size, stage in zip(self.bins, self.stages, strict=True)]
        return torch.cat([x, *pooled], dim=1)


class JointPyramidUpsampling(nn.Module):
    """FastFCN's JPU over the last three stages (strides 8, 16, 32) of an undilated backbone.

    Each stage is reduced to ``width`` channels by a 3x3 conv-BN-ReLU, the two coarser ones are
    upsampled to stride 8, the three are concatenated, and parallel separable convolutions at
    ``dilations`` (1, 2, 4, 8) extract multi-scale context from them; their outputs are concatenated
    (``width * len(dilations)`` channels at stride 8), like the last stage of a dilated backbone.
    """

    def __init__(self, in_channels: Sequence[int], width: int = 512,
                 dilations: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"JPU takes three stages, got channels {list(in_channels)}")
        self.reduce = nn.ModuleList(ConvBnAct(channels, width, 3) for channels in in_channels)
        self.dilations = tuple(dilations)
        self.dilated = nn.ModuleList(
            DepthwiseSeparableConv(3 * width, width, 3, dilation=dilation, between="bn")
            for dilation in self.dilations)
        self.out_channels = width * len(self.dilations)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        reduced = [reduce(feature) for reduce, feature in zip(self.reduce, features, strict=True)]
        size = reduced[0].shape[-2:]
        upsampled = [reduced[0]] + [F.interpolate(r, size=size, mode="bilinear", align_corners=True)
                                    for r in reduced[1:]]
        joint = torch.cat(upsampled, dim=1)
        return torch.cat([branch(joint) for branch in self.dilated], dim=1)


class ClassifierHead(nn.Sequential):
    """3x3 conv-BN-ReLU, dropout, 1x1 classifier (PSPNet's head; also its auxiliary head on stage 3)."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(ConvBnAct(in_channels, hidden_channels, 3), nn.Dropout2d(dropout),
                         nn.Conv2d(hidden_channels, num_classes, 1))
