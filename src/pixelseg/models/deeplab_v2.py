"""DeepLab v2 (Chen, Papandreou, Kokkinos, Murphy & Yuille, "DeepLab: Semantic Image Segmentation with
Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017, arXiv:1606.00915).

The one idea: Atrous Spatial Pyramid Pooling — classify every position of the stride-8 feature map of an
atrous ResNet-101 with several parallel 3x3 convolutions at different atrous rates (6, 12, 18, 24 in
ASPP-L), i.e. through several fields of view at once, and *sum* their class scores. The scores are
upsampled bilinearly to the input (the paper's optional dense CRF can be attached as for DeepLab v1 with
``set_refiner``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from .base import SegmentationModel
from .encoders.atrous import atrous_encoder
from .modules.context import SummedAtrousPyramid
from .modules.heads import PostProcessed
from .registry import register


class DeepLabV2(PostProcessed, SegmentationModel):
    """ResNet at output stride 8 + ASPP whose per-rate class scores are summed."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet101",
                 encoder_weights: str | None = None, rates: Sequence[int] = (6, 12, 18, 24),
                 output_stride: int = 8) -> None:
        super().__init__()
        self.encoder = atrous_encoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                      output_stride=output_stride)
        self.aspp = SummedAtrousPyramid(self.encoder.channels[-1], num_classes, rates)
        for branch in self.aspp.branches:  # the reference initialises the classifiers with N(0, 0.01)
            branch.weight.data.normal_(0, 0.01)
            branch.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        scores = self.aspp(self.encoder(x)[-1])
        return self.post_process(x, F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False))


@register("deeplabv2", paper="Chen et al., DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, "
                             "Atrous Convolution, and Fully Connected CRFs, TPAMI 2017, arXiv:1606.00915")
def deeplabv2(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
              encoder_weights: str | None = None, rates: Sequence[int] = (6, 12, 18, 24),
              output_stride: int = 8) -> DeepLabV2:
    return DeepLabV2(num_classes, in_channels, encoder=encoder or "resnet101", encoder_weights=encoder_weights,
                     rates=rates, output_stride=output_stride)
