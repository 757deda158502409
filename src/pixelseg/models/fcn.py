"""Fully Convolutional Networks: FCN-32s, FCN-16s, FCN-8s (Long, Shelhamer & Darrell, CVPR 2015,
arXiv:1411.4038).

VGG16 with its fully connected layers cast as convolutions (fc6: 7x7, fc7: 1x1, with dropout), a 1x1
score layer, and upsampling back to the input: FCN-32s in one fixed bilinear 32x step; FCN-16s fuses a
score layer on pool4 after a learned 2x up-convolution and upsamples 16x; FCN-8s also fuses pool3 and
upsamples 8x. As in the reference Caffe nets, conv1_1 pads by 100 so that any input size survives the
7x7 fc6, pooling rounds up, and the crops use the nets' offsets (5 and 9 for the skips; 19, 27 and 31
for the final 32x/16x/8x outputs). The learned 2x up-convolutions start as bilinear and have no bias;
the final 8x/16x/32x one is fixed bilinear (a buffer, not a parameter), as the paper trains it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SegmentationModel
from .encoders.vgg import copy_checked, fcn_vgg16, timm_fc_weights
from .modules.blocks import crop_to
from .registry import register


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights of a per-channel bilinear upsampling transposed convolution (Caffe's bilinear filler)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (grid - center).abs() / factor
    kernel = profile[:, None] * profile[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = kernel
    return weight


class FixedBilinearUpsample(nn.Module):
    """A transposed convolution with frozen bilinear weights (stride ``factor``, kernel ``2*factor``)."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("weight", bilinear_kernel(channels, 2 * factor), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv_transpose2d(x, self.weight, stride=self.factor)


def learned_upsample(channels: int) -> nn.ConvTranspose2d:
    """The learned 2x up-convolution, initialised to bilinear interpolation, without bias."""
    up = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 4))
    return up


class FCN(SegmentationModel):
    """FCN on VGG16 at output stride 32, 16 or 8 (FCN-32s / FCN-16s / FCN-8s).

    ``encoder`` is VGG16's 13 convolutions (``fcn_vgg16``); fc6 (7x7, 4096) and fc7 (1x1, 4096) follow.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *, stride: int = 8,
                 dropout: float = 0.5, encoder_weights: str | None = None) -> None:
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride must be 8, 16 or 32, not {stride}")
        self.stride = stride
        self.encoder = fcn_vgg16(in_channels)
        self.fc6 = nn.Sequential(nn.Conv2d(512, 4096, 7), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.fc7 = nn.Sequential(nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        if encoder_weights is not None:
            self.load_timm_vgg16(encoder_weights)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        if stride <= 16:
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
            self.upscore2 = learned_upsample(num_classes)
        if stride == 8:
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
            self.upscore_pool4 = learned_upsample(num_classes)
        self.upscore_final = FixedBilinearUpsample(num_classes, stride)
        # Zero-initialised score layers, as in the reference nets: training starts from the backbone.
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)

    def load_timm_vgg16(self, weights: str) -> None:
        """ImageNet VGG16 (timm's ``vgg16``): the 13 convolutions, and fc6/fc7 (already convolutions)."""
        state = self.encoder.load_timm_vgg("vgg16", weights)
        with torch.no_grad():
            for (weight, bias), fc in zip(timm_fc_weights(state, weights), (self.fc6[0], self.fc7[0]), strict=True):
                copy_checked(fc.weight, weight, weights, "fc6/fc7 weight")
                if bias is not None:
                    copy_checked(fc.bias, bias, weights, "fc6/fc7 bias")

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        stages = self.encoder(x)
        pool3, pool4 = stages[2].pooled, stages[3].pooled
        score = self.score_fr(self.fc7(self.fc6(stages[4].pooled)))
        if self.stride == 32:
            return crop_to(self.upscore_final(score), size, (19, 19))
        score = self.upscore2(score)
        score = score + crop_to(self.score_pool4(pool4), tuple(score.shape[-2:]), (5, 5))
        if self.stride == 16:
            return crop_to(self.upscore_final(score), size, (27, 27))
        score = self.upscore_pool4(score)
        score = score + crop_to(self.score_pool3(pool3), tuple(score.shape[-2:]), (9, 9))
        return crop_to(self.upscore_final(score), size, (31, 31))


_PAPER = "Long, Shelhamer & Darrell, Fully Convolutional Networks, CVPR 2015, arXiv:1411.4038"


@register("fcn32s", paper=_PAPER)
def fcn32s(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None) -> FCN:
    return FCN(num_classes, in_channels, stride=32, encoder_weights=encoder_weights)


@register("fcn16s", paper=_PAPER)
def fcn16s(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None) -> FCN:
    return FCN(num_classes, in_channels, stride=16, encoder_weights=encoder_weights)


@register("fcn8s", paper=_PAPER)
def fcn8s(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None) -> FCN:
    return FCN(num_classes, in_channels, stride=8, encoder_weights=encoder_weights)
