"""Hierarchical multi-scale attention (Tao, Sapra & Catanzaro, 2020, arXiv:2005.10821).

The one idea: instead of averaging the predictions of a network run at several input scales, learn a
per-pixel attention that says how much to trust the lower scale, and learn it *relative between
adjacent scales* so that it can be trained on one pair (0.5x and 1x) and applied to any chain of
scales at inference. For a pair (lower scale r, higher scale) with logits ``L_r``, ``L_high`` and the
attention ``a_r`` predicted at the lower scale::

    L = U(a_r * L_r) + (1 - U(a_r)) * L_high

(``U`` resizes to the output size). At inference the scales are visited from the highest down, each
new, lower scale composed into the running prediction with its own attention.

The trunk is ANY registered pixelseg model, named with its keyword arguments (``trunk``,
``trunk_kwargs``) so that the wrapper saves and loads as JSON like every other model. The attention
head follows the paper: (3x3 conv-BN-ReLU) x 2 with 256 channels, a 1x1 convolution and a sigmoid.
Deviation: the paper feeds it the trunk's penultimate features (HRNet-OCR); a generic wrapper only sees
a model's output, so here the head reads the trunk's logits at that scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel, SegmentationOutput, main_logits
from .modules.blocks import ConvBnAct
from .registry import create_model, register


class AttentionHead(nn.Module):
    """(3x3 conv-BN-ReLU) x 2, 1x1 conv to one channel, sigmoid: the weight of the lower scale."""

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(ConvBnAct(in_channels, channels, 3), ConvBnAct(channels, channels, 3),
                                    nn.Conv2d(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.layers(x))


class HierarchicalMultiScaleAttention(SegmentationModel):
    """A trunk run at several scales whose predictions are merged by learned relative attention."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, trunk: str = "hrnetv2_w48",
                 trunk_kwargs: dict[str, Any] | None = None, encoder: str | None = None,
                 encoder_weights: str | None = None, training_scales: Sequence[float] = (0.5, 1.0),
                 inference_scales: Sequence[float] = (0.5, 1.0, 2.0), attention_channels: int = 256) -> None:
        super().__init__()
        if trunk == "hmsa":
            raise PixelsegError("model 'hmsa': its trunk cannot be hmsa itself")
        for name, scales in (("training_scales", training_scales), ("inference_scales", inference_scales)):
            if not scales or any(s <= 0 for s in scales):
                raise PixelsegError(f"model 'hmsa': {name} must be a non-empty list of positive scales, "
                                    f"not {list(scales)}")
        self.trunk = create_model(trunk, num_classes=num_classes, in_channels=in_channels, encoder=encoder,
                                  encoder_weights=encoder_weights, **(trunk_kwargs or {}))
        self.attention = AttentionHead(num_classes, attention_channels)
        self.training_scales = [float(s) for s in training_scales]
        self.inference_scales = [float(s) for s in inference_scales]

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        scales = self.training_scales if self.training else self.inference_scales
        return self.compose(x, scales)

    def multi_scale_logits(self, images: Tensor, scales: Sequence[float]) -> Tensor:
        """The test-time hook (``inference.tta``): the attention-merged logits over ``scales``."""
        return main_logits(self.compose(images, scales))

    def compose(self, x: Tensor, scales: Sequence[float]) -> Tensor | SegmentationOutput:
        """Run the trunk at every scale and merge from the highest scale down (attention from the lower)."""
        size = tuple(x.shape[-2:])
        prediction: Tensor | None = None
        aux: list[Tensor] = []
        aux_weights: list[float] = []
        for scale in sorted(set(scales), reverse=True):
            output = self.trunk(_rescaled(x, scale))
            logits = main_logits(output)
            if scale == 1.0 and isinstance(output, SegmentationOutput):  # the trunk's own auxiliary losses
                aux, aux_weights = list(output.aux), list(output.aux_weights)
            if prediction is None:
                prediction = _resized(logits, size)
                continue
            attention = self.attention(logits)
            prediction = _resized(attention * logits, size) + (1 - _resized(attention, size)) * prediction
        assert prediction is not None
        if aux:
            return SegmentationOutput(out=prediction, aux=aux, aux_weights=aux_weights)
        return prediction


def _rescaled(x: Tensor, scale: float) -> Tensor:
    if scale == 1.0:
        return x
    if torch.jit.is_tracing():  # sizes are traced tensors: torch.round rounds half to even like round()
        size = [torch.round(side.double() * scale).clamp(min=1).long() for side in x.shape[-2:]]
    elif torch.compiler.is_exporting():  # symbolic sizes: round() of a symbolic float has no ONNX form
        size = [_rounded_product(side, scale) for side in x.shape[-2:]]
    else:
        size = [max(1, round(side * scale)) for side in x.shape[-2:]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _rounded_product(side: int, scale: float) -> int:
    """``max(1, round(side * scale))``, rounding half to even, in integer arithmetic (exact for the dyadic
    scales 0.25, 0.5, 1.5, 2 ...): with ``scale = p / q``, ``n = side p = f q + r``, the rounding adds 1 exactly
    when ``2 r + (f mod 2) > q``, i.e. ``(2 r + f mod 2) // (q + 1)``."""
    ratio = Fraction(scale).limit_denominator(1 << 16)
    product = side * ratio.numerator
    floor, remainder = product // ratio.denominator, product % ratio.denominator  # (divmod takes no SymInt)
    rounded = floor + (2 * remainder + floor % 2) // (ratio.denominator + 1)
    return torch.sym_max(rounded, 1)


def _resized(x: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register("hmsa", paper="Tao, Sapra & Catanzaro, Hierarchical Multi-Scale Attention for Semantic "
                        "Segmentation, 2020, arXiv:2005.10821")
def hmsa(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
         encoder_weights: str | None = None, **kwargs) -> HierarchicalMultiScaleAttention:
    """``trunk`` (a registered model name, HRNetV2-W48 by default) with ``trunk_kwargs``; ``encoder`` goes to it."""
    return HierarchicalMultiScaleAttention(num_classes, in_channels, encoder=encoder,
                                           encoder_weights=encoder_weights, **kwargs)
