"""FastFCN (Wu, Zhang, Huang, Liang & Yu, "FastFCN: Rethinking Dilated Convolution in the Backbone for
Semantic Segmentation", 2019, arXiv:1903.11816).

The one idea: a dilated backbone (output stride 8) is slow and memory-hungry; keep the ordinary backbone
at stride 32 and recover stride-8 features with Joint Pyramid Upsampling — the last three stages (strides
8, 16, 32) are reduced to 512 channels, brought to stride 8, concatenated and passed through parallel
separable convolutions at dilations 1, 2, 4, 8 — then put any segmentation head on top: here DeepLab v3's
ASPP (``head="aspp"``, rates 12, 24, 36 at stride 8) or PSPNet's pyramid pooling (``head="psp"``).
``aux_weight > 0`` adds the reference code's auxiliary head on stage 3.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel, SegmentationOutput
from .encoders.timm import TimmEncoder
from .modules.context import ClassifierHead, JointPyramidUpsampling, scaled_rates
from .modules.heads import DeepLabV3Head, PSPHead
from .registry import register

HEADS = ("aspp", "psp")


class FastFCN(SegmentationModel):
    """Undilated backbone (stride 32) + JPU (stride 8) + an ASPP or PSP head."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet50",
                 encoder_weights: str | None = None, head: str = "aspp", jpu_width: int = 512,
                 aux_weight: float = 0.0) -> None:
        super().__init__()
        if head not in HEADS:
            raise PixelsegError(f"FastFCN head must be one of {HEADS}, not {head!r}")
        self.encoder = TimmEncoder(encoder, in_channels=in_channels, weights=encoder_weights)
        if self.encoder.reductions[-3:] != [8, 16, 32]:
            raise PixelsegError(f"FastFCN needs an encoder with stages at strides 8, 16, 32; '{encoder}' has "
                                f"{self.encoder.reductions}")
        self.jpu = JointPyramidUpsampling(self.encoder.channels[-3:], jpu_width)
        if head == "aspp":
            # as the reference code's DeepLab v3 head: dropout 0.5 after the ASPP, 0.1 before the classifier
            self.head: nn.Module = DeepLabV3Head(self.jpu.out_channels, num_classes, scaled_rates((6, 12, 18), 8),
                                                 dropout=0.5, head_dropout=0.1)
        else:
            self.head = PSPHead(self.jpu.out_channels, num_classes)
        self.aux_weight = aux_weight
        self.aux_head = ClassifierHead(self.encoder.channels[-2], num_classes) if aux_weight > 0 else None

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        features = self.encoder(x)
        scores = self.head(self.jpu(features[-3:]))
        logits = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=True)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features[-2]), size=x.shape[-2:], mode="bilinear",
                                align_corners=True)
            return SegmentationOutput(out=logits, aux=[aux], aux_weights=[self.aux_weight])
        return logits


@register("fastfcn", paper="Wu, Zhang, Huang, Liang & Yu, FastFCN: Rethinking Dilated Convolution in the "
                           "Backbone for Semantic Segmentation, 2019, arXiv:1903.11816")
def fastfcn(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
            encoder_weights: str | None = None, head: str = "aspp", jpu_width: int = 512,
            aux_weight: float = 0.0) -> FastFCN:
    return FastFCN(num_classes, in_channels, encoder=encoder or "resnet50", encoder_weights=encoder_weights,
                   head=head, jpu_width=jpu_width, aux_weight=aux_weight)
