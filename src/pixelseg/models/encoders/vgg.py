"""VGG's convolution stages (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, arXiv:1409.1556), the one VGG of pixelseg.

Five stages of 3x3 convolutions with ReLU (and batch norm for the ``_bn`` variants), each followed by a
max-pooling; the fully connected layers are left to the models, which recast them as convolutions their
own way. The papers built on VGG differ only in the padding of the first convolution, the pooling and
the dilation of the last stage, so these are arguments:

- FCN (arXiv:1411.4038): VGG16, conv1_1 padded by 100, 2x2 poolings that round up — ``fcn_vgg16``.
- DeepLab v1 (arXiv:1412.7062): VGG16, 3x3 poolings with stride 2, 2, 2, 1, 1 and conv5 dilated by 2
  (stride 8) — ``atrous_vgg16``.
- SegNet (arXiv:1511.00561) and DeconvNet (arXiv:1505.04366): VGG16 with 2x2 poolings that keep their
  indices for the decoder's max-unpooling — ``vgg16``.
- TernausNet (arXiv:1801.05746): VGG11 — ``vgg11``.

``load_timm_vgg`` copies ImageNet weights from timm's ``vgg11``/``vgg16``/``vgg16_bn`` (a local
safetensors file or a timm pretrained tag) and returns the whole source state dict, so that a model
can take fc6/fc7 (``pre_logits.fc1``/``pre_logits.fc2``) from it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ...errors import PixelsegError
from ..modules.blocks import ConvBnAct
from .timm import create_timm, is_local_weights

VGG16_STAGE_DEPTHS = (2, 2, 3, 3, 3)  # convolutions per stage: 13 in all
VGG11_STAGE_DEPTHS = (1, 1, 2, 2, 2)  # 8 in all
VGG_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGGStage(NamedTuple):
    """One stage's output: its features before pooling, after pooling, and the pooling indices (or None)."""

    features: Tensor
    pooled: Tensor
    indices: Tensor | None


class VGG(nn.Module):
    """VGG's five convolution stages, each followed by its pooling layer (see the module docstring).

    ``forward`` returns one :class:`VGGStage` per stage. ``pools`` are the five pooling layers (default:
    2x2 max-pooling with stride 2 that returns its indices); ``dilations`` the per-stage dilation of the
    3x3 convolutions; ``first_padding`` the padding of the very first convolution.
    """

    def __init__(self, stage_depths: Sequence[int], in_channels: int = 3, *, base_channels: int = 64,
                 batch_norm: bool = False, first_padding: int = 1, dilations: Sequence[int] = (1, 1, 1, 1, 1),
                 pools: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        self.in_channels, self.batch_norm = in_channels, batch_norm
        self.widths = tuple(base_channels * m for m in VGG_WIDTH_MULTIPLIERS)
        stages, channels = [], in_channels
        for index, (depth, width, dilation) in enumerate(zip(stage_depths, self.widths, dilations, strict=True)):
            layers = []
            for position in range(depth):
                padding = first_padding if index == 0 and position == 0 else dilation
                layers.append(ConvBnAct(channels, width, 3, padding=padding, dilation=dilation,
                                        batch_norm=batch_norm))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pools = nn.ModuleList(pools if pools is not None
                                   else [nn.MaxPool2d(2, stride=2, return_indices=True) for _ in stages])

    def forward(self, x: Tensor) -> list[VGGStage]:
        outputs = []
        for stage, pool in zip(self.stages, self.pools, strict=True):
            features = stage(x)
            pooled = pool(features)
            x, indices = pooled if isinstance(pooled, tuple) else (pooled, None)
            outputs.append(VGGStage(features, x, indices))
        return outputs

    def convolutions(self) -> list[nn.Conv2d]:
        return [block[0] for stage in self.stages for block in stage]

    def conv_bn_pairs(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
        return [(block[0], block[1] if self.batch_norm else None) for stage in self.stages for block in stage]

    def load_timm_vgg(self, timm_name: str, weights: str) -> dict[str, Tensor]:
        """Copy the convolutions (and batch norms) of timm's ``timm_name`` into this encoder.

        Returns the whole source state dict so that a caller can take more from it (fc6/fc7).
        A source conv bias in front of our bias-free conv + batch norm is folded into the running mean.
        """
        state = timm_vgg_state(timm_name, weights, self.in_channels)
        convs, norms = _timm_vgg_layers(state)
        targets = self.conv_bn_pairs()
        if len(convs) != len(targets):
            raise PixelsegError(f"'{timm_name}' weights have {len(convs)} convolutions, the encoder has "
                                f"{len(targets)}", weights)
        if not (self.batch_norm and len(norms) == len(targets)):
            norms = [None] * len(targets)  # plain VGG weights: batch norm (if any) starts fresh
        with torch.no_grad():
            for conv_key, bn_key, (conv, bn) in zip(convs, norms, targets, strict=True):
                copy_checked(conv.weight, state[f"{conv_key}.weight"], weights, conv_key)
                bias = state.get(f"{conv_key}.bias")
                if conv.bias is not None and bias is not None:
                    copy_checked(conv.bias, bias, weights, conv_key)
                if bn is not None and bn_key is not None:
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        copy_checked(getattr(bn, name), state[f"{bn_key}.{name}"], weights, bn_key)
                    if conv.bias is None and bias is not None:
                        bn.running_mean -= bias  # BN(Wx + b) with mean m equals BN(Wx) with mean m - b
        return state


def vgg16(in_channels: int = 3, *, base_channels: int = 64, batch_norm: bool = True) -> VGG:
    """VGG16 with 2x2 poolings that return their indices (SegNet, DeconvNet)."""
    return VGG(VGG16_STAGE_DEPTHS, in_channels, base_channels=base_channels, batch_norm=batch_norm)


def vgg11(in_channels: int = 3, *, base_channels: int = 64, batch_norm: bool = False) -> VGG:
    """VGG11 with 2x2 poolings (TernausNet)."""
    return VGG(VGG11_STAGE_DEPTHS, in_channels, base_channels=base_channels, batch_norm=batch_norm)


def fcn_vgg16(in_channels: int = 3) -> VGG:
    """FCN's VGG16: conv1_1 padded by 100 so that any input survives fc6; poolings round up (Caffe)."""
    pools = [nn.MaxPool2d(2, stride=2, ceil_mode=True) for _ in VGG16_STAGE_DEPTHS]
    return VGG(VGG16_STAGE_DEPTHS, in_channels, first_padding=100, pools=pools)


def atrous_vgg16(in_channels: int = 3) -> VGG:
    """DeepLab v1's VGG16: 3x3 poolings, pool4/pool5 at stride 1, conv5 dilated by 2 (output stride 8)."""
    pools = [nn.MaxPool2d(3, stride=stride, padding=1, ceil_mode=True) for stride in (2, 2, 2, 1, 1)]
    return VGG(VGG16_STAGE_DEPTHS, in_channels, dilations=(1, 1, 1, 1, 2), pools=pools)


def timm_vgg_state(timm_name: str, weights: str, in_channels: int) -> dict[str, Tensor]:
    """The state dict of timm's ``timm_name`` from a local safetensors file or a timm pretrained tag."""
    if is_local_weights(weights):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from timm.models import adapt_input_conv

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise PixelsegError(f"cannot read encoder weights ({err})", weights) from None
        if "features.0.weight" not in state:
            raise PixelsegError(f"not a timm '{timm_name}' state dict (no 'features.0.weight')", weights)
        if state["features.0.weight"].shape[1] != in_channels:
            state["features.0.weight"] = adapt_input_conv(in_channels, state["features.0.weight"])
        return state
    return create_timm(timm_name, in_channels=in_channels, weights=weights).state_dict()


def _timm_vgg_layers(state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Keys of timm's ``features.N`` convolutions and batch norms, in network order."""
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.weight$", k))})
    convs = [f"features.{i}" for i in indices if state[f"features.{i}.weight"].ndim == 4]
    norms = [f"features.{i}" for i in indices if f"features.{i}.running_mean" in state]
    return convs, norms


FcWeights = tuple[Tensor, Tensor | None]


def timm_fc_weights(state: dict[str, Tensor], weights: str) -> tuple[FcWeights, FcWeights]:
    """VGG16's fc6 and fc7 as timm keeps them, convolutions (7x7 and 1x1): ``((w6, b6), (w7, b7))``."""
    pairs = []
    for key in ("pre_logits.fc1", "pre_logits.fc2"):
        if f"{key}.weight" not in state:
            raise PixelsegError(f"VGG16 weights without '{key}.weight' (fc6/fc7)", weights)
        pairs.append((state[f"{key}.weight"], state.get(f"{key}.bias")))
    return pairs[0], pairs[1]


def copy_checked(target: Tensor, source: Tensor, weights: str, key: str) -> None:
    """``target.copy_(source)`` with a one-line error naming the weights file when the shapes differ."""
    if target.shape != source.shape:
        raise PixelsegError(f"'{key}' has shape {tuple(source.shape)}, the model expects "
                            f"{tuple(target.shape)}", weights)
    target.copy_(source)
