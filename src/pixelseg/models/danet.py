"""DANet, the Dual Attention Network (Fu, Liu, Tian, Li, Bao, Fang & Lu, CVPR 2019, arXiv:1809.02983).

The one idea: model long-range dependencies with self-attention twice, over positions and over
channels, on top of a dilated FCN. The position attention module (PAM) lets every pixel take a
weighted sum of the features of all pixels, weighted by the softmax of their query-key similarity;
the channel attention module (CAM) does the same across the C feature maps, weighted by the softmax of
the Gram matrix. Each adds its result to its input through a learnable scale ``gamma`` that starts at
0, so training begins from the plain dilated FCN.

Head (Section 3.4 and the authors' release): the stride-8 features of a dilated ResNet (ResNet-101 by
default, from timm) go through two parallel 3x3 conv-BN-ReLU reductions to C/4 channels, PAM in one
branch and CAM in the other, one more 3x3 conv-BN-ReLU each, an element-wise sum, dropout 0.1 and a
1x1 classifier. As in the authors' training code, each branch also gets its own classifier whose
loss is added in training (``branch_supervision``, weight 1 each); at evaluation only the fused
prediction is returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, SegmentationOutput
from .encoders.timm import TimmEncoder
from .modules.blocks import ConvBnAct, crop_to, pad_to_multiple
from .registry import register


class PositionAttention(nn.Module):
    """PAM: ``out_j = gamma * sum_i softmax_i(q_j . k_i) v_i + x_j`` over all N = H*W positions.

    Queries and keys are 1x1 projections to C/8 channels, values keep the C channels.
    """

    def __init__(self, channels: int, key_reduction: int = 8) -> None:
        super().__init__()
        key_channels = max(1, channels // key_reduction)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: Tensor) -> Tensor:
        """The (B, N, N) map whose row j holds the weights pixel j gives to every pixel i."""
        queries = self.query(x).flatten(2).transpose(1, 2)  # B, N, C'
        keys = self.key(x).flatten(2)  # B, C', N
        return torch.softmax(torch.bmm(queries, keys), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        values = self.value(x).flatten(2)  # B, C, N
        attended = torch.bmm(values, self.attention(x).transpose(1, 2))  # B, C, N
        return self.gamma * attended.view_as(x) + x


class ChannelAttention(nn.Module):
    """CAM: ``out_j = gamma * sum_i softmax_i(a_j . a_i) a_i + a_j`` over the C channel maps (no projections)."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    @staticmethod
    def attention(x: Tensor) -> Tensor:
        """The (B, C, C) map: softmax over i of the Gram matrix entry (a_j . a_i), as in the paper's Eq. 3."""
        flat = x.flatten(2)
        return torch.softmax(torch.bmm(flat, flat.transpose(1, 2)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        attended = torch.bmm(self.attention(x), x.flatten(2))
        return self.gamma * attended.view_as(x) + x


class DualAttentionHead(nn.Module):
    """Reduce to C/4, PAM ‖ CAM, conv each, sum, classify; also returns each branch's features."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        inner = in_channels // 4
        self.position_in = ConvBnAct(in_channels, inner, 3)
        self.position = PositionAttention(inner)
        self.position_out = ConvBnAct(inner, inner, 3)
        self.channel_in = ConvBnAct(in_channels, inner, 3)
        self.channel = ChannelAttention()
        self.channel_out = ConvBnAct(inner, inner, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inner, num_classes, 1))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        position = self.position_out(self.position(self.position_in(features)))
        channel = self.channel_out(self.channel(self.channel_in(features)))
        return self.classifier(position + channel), position, channel


class DANet(SegmentationModel):
    """Dilated timm ResNet (output stride 8) + dual attention head, bilinear upsampling to the input."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet101",
                 encoder_weights: str | None = None, output_stride: int = 8, dropout: float = 0.1,
                 branch_supervision: bool = True) -> None:
        super().__init__()
        self.encoder = TimmEncoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                   output_stride=output_stride)
        self.stride = max(self.encoder.reductions)
        self.head = DualAttentionHead(self.encoder.channels[-1], num_classes, dropout=dropout)
        self.branch_supervision = branch_supervision
        if branch_supervision:
            inner = self.encoder.channels[-1] // 4
            self.position_classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inner, num_classes, 1))
            self.channel_classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inner, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        x, size = pad_to_multiple(x, self.stride)
        logits, position, channel = self.head(self.encoder(x)[-1])
        out = crop_to(self._upsample(logits, x), size)
        if not (self.training and self.branch_supervision):
            return out
        aux = [crop_to(self._upsample(self.position_classifier(position), x), size),
               crop_to(self._upsample(self.channel_classifier(channel), x), size)]
        return SegmentationOutput(out=out, aux=aux, aux_weights=[1.0, 1.0])

    @staticmethod
    def _upsample(logits: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)


@register("danet", paper="Fu et al., Dual Attention Network for Scene Segmentation, CVPR 2019, arXiv:1809.02983")
def danet(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
          encoder_weights: str | None = None, **kwargs) -> DANet:
    """DANet on a dilated ResNet-101 by default (``encoder`` takes any timm ResNet-like backbone)."""
    return DANet(num_classes, in_channels, encoder=encoder or "resnet101", encoder_weights=encoder_weights,
                 **kwargs)
