"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017, arXiv:1511.00561).

The one idea: the decoder upsamples with the *max-pooling indices* of the matching encoder stage
(max-unpooling), which gives a sparse map with the encoder's boundary positions, and then densifies it
with trainable convolutions. Nothing but the indices crosses from encoder to decoder, so the network is
small: no fully connected layers and no stored encoder feature maps.

Encoder: the 13 convolutions of VGG16 with batch norm (3x3, ReLU) in five stages, each followed by a
2x2 max-pooling that keeps its indices. Decoder: the mirror image, 13 convolutions with batch norm, each
stage starting with a 2x2 max-unpooling; the last convolution (``conv1_1_D`` in the reference Caffe
model) maps 64 channels straight to the class scores. With 3 input channels and 11 classes (CamVid)
the network has 29.44M trainable parameters, the paper's "29.5M" (its convolutions carry a bias that is
redundant before batch norm; we leave it out, 7,936 fewer parameters).

``encoder_weights`` loads timm's ImageNet ``vgg16_bn`` (``"imagenet"``) or a local safetensors file with
its state dict (at least the ``features.*`` tensors). ``upsampling`` swaps max-unpooling for any
operator of ``pixelseg.models.upsampling``. Inputs of any size are zero-padded to a multiple of 32 and
the output is cropped back.

This file also holds ``VGGEncoder``, the VGG convolution stages shared by DeconvNet and TernausNet.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel
from .blocks import ConvBnAct, crop_to, pad_to_multiple
from .encoders import create_timm, is_local_weights
from .registry import register
from .upsampling import check_upsampling, make_upsample

VGG16_STAGE_DEPTHS = (2, 2, 3, 3, 3)  # convolutions per stage: 13 in all
VGG11_STAGE_DEPTHS = (1, 1, 2, 2, 2)  # 8 in all
VGG_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGGEncoder(nn.Module):
    """VGG's convolution stages without the fully connected layers.

    ``forward`` returns, for each of the five stages, its feature map before pooling, after the 2x2
    max-pooling, and the pooling indices: ``(features, pooled, indices)``.
    """

    def __init__(self, stage_depths: Sequence[int], in_channels: int = 3, *, base_channels: int = 64,
                 batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels, self.batch_norm = in_channels, batch_norm
        self.widths = tuple(base_channels * m for m in VGG_WIDTH_MULTIPLIERS)
        stages, channels = [], in_channels
        for depth, width in zip(stage_depths, self.widths, strict=True):
            layers = []
            for _ in range(depth):
                layers.append(ConvBnAct(channels, width, 3, batch_norm=batch_norm))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        outputs = []
        for stage in self.stages:
            features = stage(x)
            x, indices = self.pool(features)
            outputs.append((features, x, indices))
        return outputs

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


def copy_checked(target: Tensor, source: Tensor, weights: str, key: str) -> None:
    if target.shape != source.shape:
        raise PixelsegError(f"'{key}' has shape {tuple(source.shape)}, the model expects "
                            f"{tuple(target.shape)}", weights)
    target.copy_(source)


class SegNet(SegmentationModel):
    """VGG16-BN encoder, a mirrored decoder that upsamples with the encoder's pooling indices."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, base_channels: int = 64,
                 upsampling: str = "max_unpool", encoder_weights: str | None = None) -> None:
        super().__init__()
        self.stride = 2 ** len(VGG16_STAGE_DEPTHS)
        self.encoder = VGGEncoder(VGG16_STAGE_DEPTHS, in_channels, base_channels=base_channels)
        if encoder_weights is not None:
            self.encoder.load_timm_vgg("vgg16_bn", encoder_weights)
        widths = self.encoder.widths
        check_upsampling(upsampling)
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for stage in reversed(range(len(VGG16_STAGE_DEPTHS))):
            width, depth = widths[stage], VGG16_STAGE_DEPTHS[stage]
            self.upsamples.append(make_upsample(upsampling, width, width))
            layers = [ConvBnAct(width, width, 3) for _ in range(depth - 1)]
            # The last convolution of a stage narrows to the next stage's width; conv1_1_D is the classifier.
            layers.append(ConvBnAct(width, widths[stage - 1], 3) if stage > 0
                          else nn.Conv2d(width, num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.stride)
        stages = self.encoder(x)
        y = stages[-1][1]
        for (features, _, indices), upsample, convs in zip(reversed(stages), self.upsamples, self.decoder,
                                                           strict=True):
            y = convs(upsample(y, indices, output_size=tuple(features.shape[-2:])))
        return crop_to(y, size)


@register("segnet", paper="Badrinarayanan, Kendall & Cipolla, SegNet, TPAMI 2017, arXiv:1511.00561")
def segnet(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
           **kwargs) -> SegNet:
    """The paper's SegNet: VGG16-BN encoder, max-unpooling decoder (``upsampling``, ``base_channels``)."""
    return SegNet(num_classes, in_channels, encoder_weights=encoder_weights, **kwargs)
