"""Segmentation heads shared by several papers, and the post-processing hook of DeepLab v1 and v2.

- ``DeepLabV3Head``: DeepLab v3's ASPP → 3x3 conv-BN-ReLU → classifier (Chen et al., 2017,
  arXiv:1706.05587); DeepLab v3 and FastFCN (arXiv:1903.11816) put it on their stride-8/16 features.
- ``PSPHead``: PSPNet's pyramid pooling → 3x3 conv-BN-ReLU (512) → classifier (Zhao et al., CVPR 2017,
  arXiv:1612.01105); PSPNet and FastFCN use it.
- ``PostProcessed``: a model mixin that applies an optional ``refiner(image, logits) -> logits`` in eval
  mode, the fully connected CRF of DeepLab v1 (arXiv:1412.7062) and v2 (arXiv:1606.00915).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from .blocks import ConvBnAct
from .context import AtrousSpatialPyramidPooling, ClassifierHead, PyramidPoolingModule

Refiner = Callable[[Tensor, Tensor], Tensor]


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


class PSPHead(nn.Sequential):
    """Pyramid pooling module → 3x3 conv-BN-ReLU (512) → dropout 0.1 → 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, bins: Sequence[int] = (1, 2, 3, 6),
                 channels: int = 512, dropout: float = 0.1) -> None:
        pyramid = PyramidPoolingModule(in_channels, bins)
        super().__init__(pyramid, ClassifierHead(pyramid.out_channels, num_classes, channels, dropout))


class PostProcessed:
    """An optional ``refiner(image, logits) -> logits`` applied in eval mode (DeepLab v1 and v2's CRF).

    The refiner is a plain callable, not a weight: it is not saved by ``save_pretrained``; attach it
    again after ``from_pretrained``.
    """

    refiner: Refiner | None = None
    training: bool

    def set_refiner(self, refiner: Refiner | None) -> None:
        """Post-process the upsampled logits with ``refiner(image, logits)`` in eval mode (e.g. a CRF)."""
        self.refiner = refiner

    def post_process(self, image: Tensor, logits: Tensor) -> Tensor:
        return logits if self.refiner is None or self.training else self.refiner(image, logits)
