"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015,
arXiv:1505.04366).

The one idea: a *deep* learned decoder that mirrors the whole encoder. Unpooling (max-unpooling with the
switch variables of the matching pooling layer) restores where activations came from; stacks of
deconvolution layers densify the sparse maps. Together they reconstruct object shape at fine detail
instead of a single coarse upsampling step as in FCN.

Layers (the paper's Table 1): the 13 convolutions of VGG16 in five stages with 2x2 max-pooling; fc6 as
a 7x7 convolution (7x7 pool5 → 1x1x4096), fc7 as a 1x1 convolution; deconv-fc6, a 7x7 deconvolution
back to 7x7x512; then five stages of unpooling followed by 3x3 deconvolutions mirroring the encoder
(512, 512, 512 | 512, 512, 256 | 256, 256, 128 | 128, 64 | 64, 64) and a 1x1 score layer. Every
convolution and deconvolution is followed by batch normalisation and ReLU (the paper's Section 4.1).
With 21 classes the network has 251.8M trainable parameters (the paper: 252M).

fc6's 7x7 kernel needs a pool5 map of at least 7x7, so an input is zero-padded to a multiple of 32 and
to at least 224x224 (the paper's input size) and the output is cropped back. ``encoder_weights`` loads
timm's ImageNet ``vgg16`` (``"imagenet"`` or a local safetensors file): the 13 convolutions and fc6/fc7
(timm keeps them as convolutions), as the paper initialises from VGG16. ``upsampling`` swaps the
unpooling for any operator of ``pixelseg.models.modules.upsampling``; ``base_channels`` and ``fc_channels``
shrink the network for experiments (the paper: 64 and 4096).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SegmentationModel
from .encoders.vgg import VGG16_STAGE_DEPTHS, copy_checked, timm_fc_weights, vgg16
from .modules.blocks import ConvBnAct, crop_to
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register

FC6_KERNEL = 7


class DeconvBnRelu(nn.Sequential):
    """``ConvTranspose2d → BatchNorm2d → ReLU`` (a 3x3 stride-1 deconvolution keeps the size)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DeconvNet(SegmentationModel):
    """VGG16 + fc6/fc7 convolutions, mirrored by an unpooling + deconvolution network."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, base_channels: int = 64,
                 fc_channels: int = 4096, upsampling: str = "max_unpool",
                 encoder_weights: str | None = None) -> None:
        super().__init__()
        stage_count = len(VGG16_STAGE_DEPTHS)
        self.stride = 2**stage_count
        self.min_size = self.stride * FC6_KERNEL  # 224: pool5 must hold fc6's 7x7 kernel
        self.encoder = vgg16(in_channels, base_channels=base_channels)
        widths = self.encoder.widths
        self.fc6 = ConvBnAct(widths[-1], fc_channels, FC6_KERNEL, padding=0)
        self.fc7 = ConvBnAct(fc_channels, fc_channels, 1)
        self.deconv_fc6 = DeconvBnRelu(fc_channels, widths[-1], FC6_KERNEL, padding=0)
        check_upsampling(upsampling)
        self.unpools = nn.ModuleList()
        self.deconvs = nn.ModuleList()
        for stage in reversed(range(stage_count)):
            width, depth = widths[stage], VGG16_STAGE_DEPTHS[stage]
            self.unpools.append(make_upsample(upsampling, width, width))
            out_width = widths[max(stage - 1, 0)]
            self.deconvs.append(nn.Sequential(*[DeconvBnRelu(width, width) for _ in range(depth - 1)],
                                              DeconvBnRelu(width, out_width)))
        self.score = nn.Conv2d(widths[0], num_classes, 1)
        if encoder_weights is not None:
            self.load_timm_vgg16(encoder_weights)

    def load_timm_vgg16(self, weights: str) -> None:
        """ImageNet VGG16 from timm: 13 convolutions, and fc6/fc7 (``pre_logits.fc1/fc2``)."""
        state = self.encoder.load_timm_vgg("vgg16", weights)
        with torch.no_grad():  # fc6/fc7 have no bias of their own (batch norm follows)
            for (weight, _), target in zip(timm_fc_weights(state, weights), (self.fc6[0], self.fc7[0]), strict=True):
                copy_checked(target.weight, weight, weights, "fc6/fc7 weight")

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        padded_height = max(self.min_size, -(-height // self.stride) * self.stride)
        padded_width = max(self.min_size, -(-width // self.stride) * self.stride)
        x = nn.functional.pad(x, (0, padded_width - width, 0, padded_height - height))
        stages = self.encoder(x)
        y = self.deconv_fc6(self.fc7(self.fc6(stages[-1][1])))
        for (features, _, indices), unpool, deconvs in zip(reversed(stages), self.unpools, self.deconvs,
                                                           strict=True):
            y = deconvs(unpool(y, indices, output_size=tuple(features.shape[-2:])))
        return crop_to(self.score(y), (height, width))


@register("deconvnet", paper="Noh, Hong & Han, Learning Deconvolution Network for Semantic Segmentation, "
                             "ICCV 2015, arXiv:1505.04366")
def deconvnet(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
              **kwargs) -> DeconvNet:
    """The paper's DeconvNet (``base_channels=64``, ``fc_channels=4096``, max-unpooling)."""
    return DeconvNet(num_classes, in_channels, encoder_weights=encoder_weights, **kwargs)
