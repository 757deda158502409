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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from .base import SegmentationModel
from .blocks import ConvBnAct
from .context import AtrousSpatialPyramidPooling
from .encoders import TimmEncoder
from .registry import register


def apply_multi_grid(encoder: TimmEncoder, unit_rates: Sequence[int], output_stride: int) -> None:
    """Set the 3x3 convolutions of the last ResNet stage to dilation ``stage_rate * unit_rates[i]``.

    ``stage_rate`` is the dilation that replaces the stage's stride: 2 at output stride 16, 4 at 8.
    """
    last_stage = getattr(encoder.body, "layer4", None)
    if last_stage is None or not all(hasattr(block, "conv2") for block in last_stage):
        raise PixelsegError(f"multi_grid needs a ResNet-style encoder (layer4 of residual blocks); "
                            f"'{encoder.name}' is not one: pass multi_grid=None")
    stage_rate = 32 // output_stride
    for index, block in enumerate(last_stage):
        rate = stage_rate * unit_rates[index % len(unit_rates)]
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)


def atrous_encoder(name: str, *, in_channels: int, weights: str | None, output_stride: int,
                   multi_grid: Sequence[int] | None = None) -> TimmEncoder:
    """A timm backbone at output stride 8 or 16 (dilated last stages), optionally with multi-grid."""
    if output_stride not in (8, 16):
        raise PixelsegError(f"output_stride must be 8 or 16, not {output_stride}")
    encoder = TimmEncoder(name, in_channels=in_channels, weights=weights, output_stride=output_stride)
    if multi_grid is not None:
        apply_multi_grid(encoder, multi_grid, output_stride)
    return encoder


def rebuilt_at_output_stride(encoder: TimmEncoder, output_stride: int,
                             multi_grid: Sequence[int] | None) -> TimmEncoder:
    """The same backbone with the same weights at another output stride (strides traded for dilation)."""
    body = encoder.body
    first_conv = next(m for m in body.modules() if isinstance(m, nn.Conv2d))
    with torch.device(first_conv.weight.device):
        rebuilt = atrous_encoder(encoder.name, in_channels=first_conv.in_channels, weights=None,
                                 output_stride=output_stride, multi_grid=multi_grid)
    rebuilt.to(dtype=first_conv.weight.dtype).load_state_dict(encoder.state_dict())
    return rebuilt.train(encoder.training)


def set_aspp_rates(aspp: AtrousSpatialPyramidPooling, rates: Sequence[int]) -> None:
    """Change the dilation of the ASPP's atrous branches in place (their weights do not depend on it)."""
    for branch, rate in zip(aspp.branches[1:1 + len(aspp.rates)], rates, strict=True):
        atrous_conv = branch[0]
        atrous_conv.dilation, atrous_conv.padding = (rate, rate), (rate, rate)
    aspp.rates = tuple(rates)


def record_output_stride(model: nn.Module, output_stride: int) -> None:
    """Keep the saved config (``save_pretrained``) in step with a changed output stride."""
    config = getattr(model, "pixelseg_config", None)
    if config is not None:
        config["kwargs"]["output_stride"] = output_stride


def scaled_rates(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """The ASPP rates are given at output stride 16; at output stride 8 they double."""
    return tuple(rate * 16 // output_stride for rate in rates)


class DeepLabV3Head(nn.Sequential):
    """ASPP → (3x3 conv-BN-ReLU, optional dropout) → 1x1 classifier; used by DeepLab v3 and FastFCN."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int], *, channels: int = 256,
                 head_conv: bool = True, dropout: float = 0.5, head_dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [AtrousSpatialPyramidPooling(in_channels, channels, rates, dropout=dropout)]
        if head_conv:
            layers.append(ConvBnAct(channels, channels, 3))
        if head_dropout > 0:
            layers.append(nn.Dropout(head_dropout))
        layers.append(nn.Conv2d(channels, num_classes, 1))
        super().__init__(*layers)


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
