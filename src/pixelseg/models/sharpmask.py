"""SharpMask-style top-down refinement (Pinheiro, Lin, Collobert & Dollár, ECCV 2016, arXiv:1603.08695,
"Learning to Refine Object Segments").

The one idea: a feed-forward net gives a coarse mask from its deepest features; a top-down pass then
refines it step by step, each refinement module merging the current top-down stream with the encoder's
skip features of the next finer resolution and doubling the resolution. The paper's efficient module
(Fig. 3 and the authors' release): 3x3 convolutions on the skip features (to ``k_s`` channels, then
halved) and on the top-down stream (``k_m`` channels, then halved) whose outputs are summed (the same
as one convolution of their concatenation), a ReLU and a 2x bilinear upsampling. ``k_m = k_s`` start
at 32 and halve at every refinement, as in the paper.

Adapted to semantic segmentation on any timm encoder: the top-down stream starts with a 3x3 convolution
on the deepest features, a 1x1 convolution of it is the coarse mask (returned as an auxiliary output in
training, so the coarse and refined predictions are learned jointly instead of in the paper's two
phases), one refinement module per finer encoder level, and a final 3x3 convolution to the classes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, SegmentationOutput
from .encoders.timm import TimmEncoder
from .modules.blocks import ConvBnAct, crop_to, pad_to_multiple
from .registry import register


class RefinementModule(nn.Module):
    """Merge skip features into the top-down stream and double its resolution.

    ``skip → 3x3 (hidden) → ReLU → 3x3 (k) → ReLU → 3x3 (k/2)`` and ``top-down (k) → 3x3 (k) → ReLU →
    3x3 (k/2)`` are summed, passed through ReLU and upsampled 2x (bilinear) to the next skip's size.
    """

    def __init__(self, skip_channels: int, channels: int, *, skip_hidden: int = 64) -> None:
        super().__init__()
        out_channels = max(1, channels // 2)
        self.skip = nn.Sequential(ConvBnAct(skip_channels, skip_hidden, 3, batch_norm=False),
                                  ConvBnAct(skip_hidden, channels, 3, batch_norm=False),
                                  nn.Conv2d(channels, out_channels, 3, padding=1))
        self.top_down = nn.Sequential(ConvBnAct(channels, channels, 3, batch_norm=False),
                                      nn.Conv2d(channels, out_channels, 3, padding=1))
        self.out_channels = out_channels

    def forward(self, top_down: Tensor, skip: Tensor, output_size: tuple[int, int]) -> Tensor:
        merged = F.relu(self.skip(skip) + self.top_down(top_down))
        return F.interpolate(merged, size=output_size, mode="bilinear", align_corners=False)


class SharpMask(SegmentationModel):
    """Coarse mask from the deepest encoder features, refined top-down through every finer level."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet50",
                 encoder_weights: str | None = None, channels: int = 32, coarse_loss_weight: float = 0.4) -> None:
        super().__init__()
        self.encoder = TimmEncoder(encoder, in_channels=in_channels, weights=encoder_weights)
        self.stride = max(self.encoder.reductions)
        self.coarse_loss_weight = coarse_loss_weight
        self.top = ConvBnAct(self.encoder.channels[-1], channels, 3, batch_norm=False)
        self.coarse = nn.Conv2d(channels, num_classes, 1)
        refinements, width = [], channels
        skip_widths = list(reversed(self.encoder.channels[:-1]))
        for index, skip_channels in enumerate(skip_widths):
            hidden = 32 if index == len(skip_widths) - 1 else 64  # the release's 64, 64, 64, 32
            refinements.append(RefinementModule(skip_channels, width, skip_hidden=hidden))
            width = refinements[-1].out_channels
        self.refinements = nn.ModuleList(refinements)
        self.classifier = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        x, size = pad_to_multiple(x, self.stride)
        features = self.encoder(x)
        stream = self.top(features[-1])
        coarse = self.coarse(stream)
        skips = list(reversed(features[:-1]))
        for index, (refine, skip) in enumerate(zip(self.refinements, skips, strict=True)):
            next_size = skips[index + 1].shape[-2:] if index + 1 < len(skips) else _doubled(skip)
            stream = refine(_resized(stream, skip), skip, tuple(next_size))
        logits = self.classifier(stream)
        out = crop_to(F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), size)
        if not self.training or self.coarse_loss_weight == 0:
            return out
        coarse = crop_to(F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False), size)
        return SegmentationOutput(out=out, aux=[coarse], aux_weights=[self.coarse_loss_weight])


def _doubled(x: Tensor) -> tuple[int, int]:
    return 2 * x.shape[-2], 2 * x.shape[-1]


def _resized(stream: Tensor, like: Tensor) -> Tensor:
    """The top-down stream at the skip's size (a no-op when the encoder's strides halve exactly)."""
    if stream.shape[-2:] == like.shape[-2:]:
        return stream
    return F.interpolate(stream, size=like.shape[-2:], mode="bilinear", align_corners=False)


@register("sharpmask", paper="Pinheiro et al., Learning to Refine Object Segments, ECCV 2016, arXiv:1603.08695")
def sharpmask(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
              encoder_weights: str | None = None, **kwargs) -> SharpMask:
    """SharpMask refinement on a timm encoder (ResNet-50 by default, as in the paper's final model)."""
    return SharpMask(num_classes, in_channels, encoder=encoder or "resnet50", encoder_weights=encoder_weights,
                     **kwargs)
