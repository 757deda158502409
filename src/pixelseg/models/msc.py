"""DeepLab's multi-scale inputs (MSC) around any segmentation network.

Chen, Papandreou, Kokkinos, Murphy & Yuille, "DeepLab: Semantic Image Segmentation with Deep Convolutional
Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2018 (arXiv:1606.00915), Sec. 4.1: the same
network (shared weights) runs on the image rescaled by 1, 0.75 and 0.5; each scale's logits are resized
bilinearly to those of the largest scale and fused by their pixel-wise maximum. In training every scale's
logits and the fused ones are each supervised (their losses summed); here each scale's logits are resized
to the fused size and enter the loss as auxiliary outputs of weight 1 (DeepLab's Caffe code shrinks the
labels to each scale instead). At evaluation the model returns the fused logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationOutput, main_logits
from .registry import create_model, register


class MultiScaleInput(nn.Module):
    """``model`` on the image at each of ``scales``, max-fused; (B, C, H, W) → logits of the largest scale."""

    def __init__(self, model: nn.Module, scales: Sequence[float] = (1.0, 0.75, 0.5)) -> None:
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {list(scales)}")
        self.model = model
        self.scales = [float(s) for s in scales]

    def forward(self, image: Tensor) -> Tensor | SegmentationOutput:
        outputs = []
        for scale in self.scales:
            scaled = image if scale == 1.0 else F.interpolate(image, scale_factor=scale, mode="bilinear",
                                                              align_corners=False, recompute_scale_factor=True)
            outputs.append(main_logits(self.model(scaled)))
        size = max((o.shape[-2:] for o in outputs), key=lambda s: s[0] * s[1])
        resized = [o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                   for o in outputs]
        fused = torch.stack(resized).amax(dim=0)
        if self.training and len(resized) > 1:
            return SegmentationOutput(out=fused, aux=resized, aux_weights=[1.0] * len(resized))
        return fused


@register("msc", paper="Chen et al., DeepLab (multi-scale inputs, MSC), TPAMI 2018, arXiv:1606.00915")
def msc(num_classes: int, in_channels: int = 3, *, base: str, base_kwargs: dict[str, Any] | None = None,
        scales: Sequence[float] = (1.0, 0.75, 0.5), encoder: str | None = None,
        encoder_weights: str | None = None) -> MultiScaleInput:
    """The registered model ``base`` (built with ``base_kwargs``) wrapped in multi-scale inputs."""
    model = create_model(base, num_classes=num_classes, in_channels=in_channels, encoder=encoder,
                         encoder_weights=encoder_weights, **(base_kwargs or {}))
    return MultiScaleInput(model, scales)
