"""V-Net (Milletari, Navab & Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical
Image Segmentation", 3DV 2016, arXiv:1606.04797). A 3D model: it maps volumes ``(B, C, D, H, W)`` to
logits ``(B, num_classes, D, H, W)``.

The one idea: segment a whole volume at once with a fully convolutional 3D network whose every stage
learns a residual function, and train it with a loss that is the Dice coefficient itself, so that a
small foreground does not drown in the background.

Architecture (Fig. 2): the compression path has five stages of 1, 2, 3, 3, 3 volumetric 5x5x5
convolutions with 16, 32, 64, 128, 256 channels; each stage's input is added to the output of its last
convolution (the first stage's single-channel input is repeated to 16 channels), and a 2x2x2 convolution
with stride 2 halves the resolution and doubles the channels between stages (instead of pooling). The
decompression path mirrors it: a 2x2x2 transposed convolution with stride 2 doubles the resolution, its
output is concatenated with the compression stage of the same resolution ("fine-grained features
forwarded from the left"), and stages of 3, 3, 2, 1 convolutions at 256, 128, 64, 32 channels follow, each
residual. The output block of the authors' prototxt follows: a 5x5x5 convolution to the classes with
PReLU, then a 1x1x1 convolution (class scores; softmax in the loss). PReLU non-linearities throughout (one
slope per channel, Caffe's default). ``upsampling`` swaps the 2x2x2 up-convolution for another operator of
``models.modules.upsampling`` in its 3D form (nearest, bed_of_nails, bilinear = trilinear, resize_conv; V-Net
downsamples with strided convolutions, so there are no pooling indices for max-unpooling). The conv counts per stage are the paper's (Fig. 2); the released
prototxt uses fewer (1, 1, 2, 3, 3 down and 3, 2, 1, 1 up), available through ``down_convs``/``up_convs``. The paper uses no batch normalisation; ``batch_norm=True`` adds it
after every convolution (as MONAI's and other ports do). Volumes are padded to a multiple of 16 in
every dimension and the logits cropped back.

Train it with ``pixelseg.losses.vnet_dice_loss`` (the paper's Dice with squared terms in the
denominator); ``pixelseg.data.volumes`` reads ``.npy`` and multi-page ``.tif`` volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import SegmentationModel
from .modules.blocks import pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register

VNET_CHANNELS = (16, 32, 64, 128, 256)
VNET_DOWN_CONVS = (1, 2, 3, 3, 3)
VNET_UP_CONVS = (3, 3, 2, 1)


class ConvPReLU3d(nn.Sequential):
    """A volumetric convolution, optional batch norm, per-channel PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, *, stride: int = 1,
                 batch_norm: bool = False) -> None:
        layers: list[nn.Module] = [nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                                             padding=(kernel_size - 1) // 2 if stride == 1 else 0,
                                             bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm3d(out_channels))
        layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class UpPReLU3d(nn.Sequential):
    """2x upsampling (the paper's 2x2x2 transposed convolution with stride 2, or another ``upsampling``
    operator in 3D), optional batch norm, per-channel PReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool = False,
                 upsampling: str = "transposed") -> None:
        layers: list[nn.Module] = [make_upsample(upsampling, in_channels, out_channels, 2, bias=not batch_norm,
                                                 dims=3)]
        if batch_norm:
            layers.append(nn.BatchNorm3d(out_channels))
        layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class ResidualStage(nn.Module):
    """``convs`` 5x5x5 convolutions with PReLU after each but the last; the residual (by default the stage
    input) is added to the last convolution's output, then PReLU — as in the authors' prototxt."""

    def __init__(self, in_channels: int, channels: int, convs: int, *, batch_norm: bool) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(ConvPReLU3d(in_channels if i == 0 else channels, channels,
                                                 batch_norm=batch_norm) for i in range(convs - 1)))
        last: list[nn.Module] = [nn.Conv3d(in_channels if convs == 1 else channels, channels, 5, padding=2,
                                           bias=not batch_norm)]
        if batch_norm:
            last.append(nn.BatchNorm3d(channels))
        self.last = nn.Sequential(*last)
        self.activation = nn.PReLU(channels)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        residual = x if residual is None else residual
        return self.activation(self.last(self.convs(x)) + residual)


class VNet(SegmentationModel):
    """The paper's V-Net; ``channels`` and the convolutions per stage are configurable."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, *, channels: Sequence[int] = VNET_CHANNELS,
                 down_convs: Sequence[int] = VNET_DOWN_CONVS, up_convs: Sequence[int] = VNET_UP_CONVS,
                 batch_norm: bool = False, upsampling: str = "transposed") -> None:
        super().__init__()
        if check_upsampling(upsampling) == "max_unpool":
            raise ValueError("V-Net downsamples with strided convolutions, so it has no max-pooling indices "
                             "to unpool with; choose another upsampling")
        channels, down_convs, up_convs = tuple(channels), tuple(down_convs), tuple(up_convs)
        if not (len(channels) == len(down_convs) == len(up_convs) + 1) or min(down_convs + up_convs) < 1:
            raise ValueError("V-Net needs len(channels) == len(down_convs) == len(up_convs) + 1, "
                             "and at least one convolution per stage")
        self.levels = len(channels)
        first = channels[0]
        # Stage 1's input is repeated to ``first`` channels for its residual sum (a 1x1x1 projection when
        # the input width does not divide it).
        self.input_projection = None if first % in_channels == 0 else nn.Conv3d(in_channels, first, 1)
        self.input_stage = ResidualStage(in_channels, first, down_convs[0], batch_norm=batch_norm)
        self.down = nn.ModuleList(
            ConvPReLU3d(channels[i], channels[i + 1], 2, stride=2, batch_norm=batch_norm)
            for i in range(self.levels - 1))
        self.down_stages = nn.ModuleList(
            ResidualStage(channels[i + 1], channels[i + 1], down_convs[i + 1], batch_norm=batch_norm)
            for i in range(self.levels - 1))
        # Decompression: a 2x2x2 up-convolution from the level below to (stage width - skip width)
        # channels, concatenated with the skip: stage widths 256, 128, 64, 32 in the paper.
        self.up = nn.ModuleList()
        self.up_stages = nn.ModuleList()
        below = channels[-1]
        for step, level in enumerate(reversed(range(self.levels - 1))):
            skip = channels[level]
            width = channels[-1] if level == self.levels - 2 else 2 * skip
            self.up.append(UpPReLU3d(below, width - skip, batch_norm=batch_norm, upsampling=upsampling))
            self.up_stages.append(ResidualStage(width, width, up_convs[step], batch_norm=batch_norm))
            below = width
        # Output (authors' prototxt): 5x5x5 conv to the classes + PReLU, then a 1x1x1 conv; softmax outside.
        self.head = nn.Sequential(nn.Conv3d(below, num_classes, 5, padding=2), nn.PReLU(num_classes),
                                  nn.Conv3d(num_classes, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"V-Net takes volumes (B, C, D, H, W), not a tensor of shape {tuple(x.shape)}")
        x, size = pad_to_multiple(x, 2 ** (self.levels - 1), dims=3)
        first = self.input_stage.activation.num_parameters
        residual = (x.repeat(1, first // x.shape[1], 1, 1, 1) if self.input_projection is None
                    else self.input_projection(x))
        y = self.input_stage(x, residual=residual)
        skips = [y]
        for down, stage in zip(self.down, self.down_stages, strict=True):
            y = stage(down(y))
            skips.append(y)
        y = skips.pop()
        for up, stage in zip(self.up, self.up_stages, strict=True):
            y = stage(torch.cat([up(y), skips.pop()], dim=1))
        logits = self.head(y)
        return logits[..., :size[0], :size[1], :size[2]]


@register("vnet", paper="Milletari, Navab & Ahmadi, V-Net, 3DV 2016, arXiv:1606.04797 (3D: B,C,D,H,W volumes)")
def vnet(num_classes: int = 2, in_channels: int = 1, **kwargs) -> VNet:
    """The paper's V-Net (3D; volumes ``(B, C, D, H, W)``)."""
    return VNet(num_classes, in_channels, **kwargs)
