"""DeepLab v3 (Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017, arXiv:1706.05587).

The one idea: capture context at several scales *in parallel* on top of an atrous (dilated) backbone —
Atrous Spatial Pyramid Pooling with a 1x1 branch, three 3x3 branches at rates (6, 12, 18) and an
image-level pooling branch, each conv-BN-ReLU with 256 channels, concatenated and fused by a 1x1 conv.

The backbone is a ResNet whose last stage(s) trade stride for dilation: output stride 16 by default (the
rates double at output stride 8, as the paper evaluates), and whose last stage uses the "multi-grid"
unit rates (1, 2, 4), multiplied by that stage's dilation. Logits are upsampled bilinearly. As in the
paper, a net trained at output stride 16 can be evaluated at 8: ``model.set_output_stride(8)`` re-dilates
the backbone and doubles the ASPP rates, keeping every weight.

``head_conv=True`` (default) keeps the 3x3 conv-BN-ReLU (256) between ASPP and the classifier that the
torchvision reference (``deeplabv3_resnet50``) has; with ResNet-50 and 21 classes this model then has
exactly its 39,638,869 parameters. The paper's text goes from the ASPP's 1x1 fusion straight to the
classifier: ``head_conv=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from .base import SegmentationModel, record_output_stride
from .encoders.atrous import atrous_encoder, rebuilt_at_output_stride
from .modules.context import scaled_rates, set_aspp_rates
from .modules.heads import DeepLabV3Head
from .registry import register


class DeepLabV3(SegmentationModel):
    """Atrous ResNet (multi-grid) + ASPP with image pooling, bilinear upsampling to the input size."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet101",
                 encoder_weights: str | None = None, output_stride: int = 16,
                 rates: Sequence[int] = (6, 12, 18), multi_grid: Sequence[int] | None = (1, 2, 4),
                 aspp_channels: int = 256, head_conv: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        self.output_stride, self.base_rates, self.multi_grid = output_stride, tuple(rates), multi_grid
        self.encoder = atrous_encoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                      output_stride=output_stride, multi_grid=multi_grid)
        self.head = DeepLabV3Head(self.encoder.channels[-1], num_classes, scaled_rates(rates, output_stride),
                                  channels=aspp_channels, head_conv=head_conv, dropout=dropout)

    def set_output_stride(self, output_stride: int) -> None:
        """Evaluate at another output stride with the same weights (the paper trains at 16, tests at 8)."""
        self.encoder = rebuilt_at_output_stride(self.encoder, output_stride, self.multi_grid)
        set_aspp_rates(self.head[0], scaled_rates(self.base_rates, output_stride))
        self.output_stride = output_stride
        record_output_stride(self, output_stride)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.head(self.encoder(x)[-1])
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("deeplabv3", paper="Chen, Papandreou, Schroff & Adam, Rethinking Atrous Convolution for Semantic "
                             "Image Segmentation, 2017, arXiv:1706.05587")
def deeplabv3(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
              encoder_weights: str | None = None, output_stride: int = 16,
              rates: Sequence[int] = (6, 12, 18), multi_grid: Sequence[int] | None = (1, 2, 4),
              aspp_channels: int = 256, head_conv: bool = True, dropout: float = 0.5) -> DeepLabV3:
    return DeepLabV3(num_classes, in_channels, encoder=encoder or "resnet101", encoder_weights=encoder_weights,
                     output_stride=output_stride, rates=rates, multi_grid=multi_grid,
                     aspp_channels=aspp_channels, head_conv=head_conv, dropout=dropout)
