"""PSPNet, the Pyramid Scene Parsing Network (Zhao, Shi, Qi, Wang & Jia, CVPR 2017, arXiv:1612.01105).

The one idea: give every pixel the global context of the scene by pooling the last feature map of a
dilated ResNet (output stride 8) into a pyramid of 1x1, 2x2, 3x3 and 6x6 bins, reducing each level to a
quarter of the channels with a 1x1 conv, upsampling them back and concatenating them with the features
before a 3x3 conv and the classifier. Training adds an auxiliary classifier on stage 3 (res4b22 of
ResNet-101) whose loss is weighted by 0.4 (deep supervision, section 3.3).

The default encoder is ResNet-101 (the paper's VOC and Cityscapes nets; its ablations use ResNet-50). The
authors' released ResNets have a three-conv "deep" stem; timm's ``resnet101s``/``resnet50s`` are those,
timm's plain ``resnet101`` (default here, the one with common ImageNet weights) has the 7x7 stem.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from .base import SegmentationModel, SegmentationOutput
from .encoders.atrous import atrous_encoder
from .modules.context import ClassifierHead
from .modules.heads import PSPHead
from .registry import register


class PSPNet(SegmentationModel):
    """Dilated ResNet (stride 8) + pyramid pooling head; an auxiliary head on stage 3 while training."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet101",
                 encoder_weights: str | None = None, bins: Sequence[int] = (1, 2, 3, 6),
                 output_stride: int = 8, aux_weight: float = 0.4, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = atrous_encoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                      output_stride=output_stride)
        self.head = PSPHead(self.encoder.channels[-1], num_classes, bins, dropout=dropout)
        self.aux_weight = aux_weight
        self.aux_head = (ClassifierHead(self.encoder.channels[-2], num_classes, 256, dropout)
                         if aux_weight > 0 else None)

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        features = self.encoder(x)
        logits = F.interpolate(self.head(features[-1]), size=x.shape[-2:], mode="bilinear", align_corners=True)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features[-2]), size=x.shape[-2:], mode="bilinear",
                                align_corners=True)
            return SegmentationOutput(out=logits, aux=[aux], aux_weights=[self.aux_weight])
        return logits


@register("pspnet", paper="Zhao, Shi, Qi, Wang & Jia, Pyramid Scene Parsing Network, CVPR 2017, "
                          "arXiv:1612.01105")
def pspnet(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
           encoder_weights: str | None = None, bins: Sequence[int] = (1, 2, 3, 6), output_stride: int = 8,
           aux_weight: float = 0.4, dropout: float = 0.1) -> PSPNet:
    return PSPNet(num_classes, in_channels, encoder=encoder or "resnet101", encoder_weights=encoder_weights,
                  bins=bins, output_stride=output_stride, aux_weight=aux_weight, dropout=dropout)
