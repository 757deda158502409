"""The HRNet trunk (Sun, Xiao, Liu & Wang, "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019, arXiv:1902.09212; HRNetV2: arXiv:1904.04514).

A stride-4 stream kept alive from the stem to the end, with a lower-resolution stream added at each
stage (strides 8, 16, 32) and repeated multi-resolution fusion after every module: strided 3x3
convolutions going down, 1x1 convolution + upsampling going up. Layout (width C): stem of two stride-2
3x3 convolutions (64 channels); stage 1: four bottleneck blocks (64 → 256); stages 2/3/4: 1/4/3 modules
of four basic blocks per stream with C, 2C, 4C, 8C channels. The module names follow the authors'
release (also timm's ``hrnet_w*``), so ImageNet weights from timm load unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.blocks import ConvBnAct
from .timm import create_timm

UpsampleMode = Literal["bilinear", "nearest"]

# Modules per stage and residual blocks per stream: the paper's Table (HRNetV2-W18/W32/W48 share it).
STAGE_MODULES = (1, 4, 3)
BLOCKS_PER_STREAM = 4
STEM_CHANNELS = 64


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (the residual unit of stages 2-4)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = (ConvBnAct(in_channels, channels, 1, activation=None)
                           if in_channels != channels else None)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + shortcut, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut: the residual unit of stage 1."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = (ConvBnAct(in_channels, out_channels, 1, activation=None)
                           if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        return F.relu(self.bn3(self.conv3(y)) + shortcut, inplace=True)


def downsampling_path(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """``steps`` stride-2 3x3 convolutions from a high- to a low-resolution stream.

    The intermediate convolutions keep the source width and end in ReLU; the last one changes the width
    and has no ReLU (the ReLU comes after the fusion sum).
    """
    layers = [ConvBnAct(in_channels, in_channels, 3, stride=2) for _ in range(steps - 1)]
    layers.append(ConvBnAct(in_channels, out_channels, 3, stride=2, activation=None))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel streams of basic blocks, then every stream receives the sum of all streams (fusion)."""

    def __init__(self, widths: list[int], *, upsample_mode: UpsampleMode = "bilinear") -> None:
        super().__init__()
        self.upsample_mode = upsample_mode
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(width, width) for _ in range(BLOCKS_PER_STREAM))) for width in widths)
        fuse_layers = []
        for target, target_width in enumerate(widths):
            row: list[nn.Module] = []
            for source, source_width in enumerate(widths):
                if source > target:  # lower resolution: 1x1 conv to the target width, then upsample
                    row.append(ConvBnAct(source_width, target_width, 1, activation=None))
                elif source == target:
                    row.append(nn.Identity())
                else:  # higher resolution: strided 3x3 convolutions
                    row.append(downsampling_path(source_width, target_width, target - source))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers) if len(widths) > 1 else nn.ModuleList()

    def forward(self, streams: list[Tensor]) -> list[Tensor]:
        streams = [branch(x) for branch, x in zip(self.branches, streams, strict=True)]
        if len(streams) == 1:
            return streams
        fused = []
        for target, row in enumerate(self.fuse_layers):
            size = streams[target].shape[-2:]
            total: Tensor | None = None
            for source, layer in enumerate(row):  # summed from the highest resolution down
                y = layer(streams[source])
                if source > target:
                    y = F.interpolate(y, size=size, mode=self.upsample_mode,
                                      align_corners=False if self.upsample_mode == "bilinear" else None)
                total = y if total is None else total + y
            fused.append(F.relu(total))
        return fused


class HRNetBackbone(nn.Module):
    """Stem, stage 1 (bottlenecks), then stages 2-4 with 2, 3, 4 streams of width C, 2C, 4C, 8C.

    Returns the four stream outputs at strides 4, 8, 16, 32.
    """

    def __init__(self, width: int, in_channels: int = 3, *, upsample_mode: UpsampleMode = "bilinear") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(STEM_CHANNELS)
        stage1_width = STEM_CHANNELS * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            Bottleneck(STEM_CHANNELS, STEM_CHANNELS),
            *(Bottleneck(stage1_width, STEM_CHANNELS) for _ in range(BLOCKS_PER_STREAM - 1)))
        self.widths = [width * 2**stream for stream in range(4)]
        previous = [stage1_width]
        for stage, modules in zip((2, 3, 4), STAGE_MODULES, strict=True):
            widths = self.widths[:stage]
            setattr(self, f"transition{stage - 1}", self._transition(previous, widths))
            setattr(self, f"stage{stage}", nn.Sequential(
                *(HighResolutionModule(widths, upsample_mode=upsample_mode) for _ in range(modules))))
            previous = widths

    @staticmethod
    def _transition(previous: list[int], widths: list[int]) -> nn.ModuleList:
        """Adapt the existing streams' widths and open a new, half-resolution stream from the lowest one."""
        layers: list[nn.Module] = []
        for stream, width in enumerate(widths):
            if stream < len(previous):
                layers.append(nn.Identity() if previous[stream] == width
                              else ConvBnAct(previous[stream], width, 3))
            else:  # nested once more, as in the release, so that its weight names load unchanged
                layers.append(nn.Sequential(ConvBnAct(previous[-1], width, 3, stride=2)))
        return nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        streams = [self.layer1(x)]
        for stage in (2, 3, 4):
            transition: nn.ModuleList = getattr(self, f"transition{stage - 1}")
            streams = [layer(streams[min(i, len(streams) - 1)]) for i, layer in enumerate(transition)]
            for module in getattr(self, f"stage{stage}"):
                streams = module(streams)
        return streams

    def load_timm_hrnet(self, weights: str, timm_name: str) -> None:
        """Copy the backbone of timm's ``hrnet_w*`` (ImageNet): same module names, classifier head dropped."""
        reference = create_timm(timm_name, in_channels=self.conv1.in_channels, weights=weights)
        classification_head = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
        state = {key: value for key, value in reference.state_dict().items()
                 if not key.startswith(classification_head)}
        self.load_state_dict(state, strict=True)
