"""DeepLab v1, the LargeFOV variant (Chen, Papandreou, Kokkinos, Murphy & Yuille, "Semantic Image
Segmentation with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015, arXiv:1412.7062).

The one idea: keep VGG16's resolution by removing the subsampling of its last two poolings and dilating
the filters that follow instead (the "hole" / atrous algorithm), so the net outputs dense scores at
stride 8 with the receptive field of the original; upsample them bilinearly, optionally sharpen them with
a fully connected CRF.

Layout, as in the paper's LargeFOV net: VGG16's 13 convolutions; pool1-3 are 3x3 max-pools with stride 2,
pool4 and pool5 3x3 max-pools with stride 1; conv5_x are dilated by 2; fc6 is a 3x3 convolution with
dilation 12 and 1024 channels, fc7 a 1x1 with 1024 channels (both with ReLU and dropout 0.5), fc8 a 1x1
to the classes: 20.5M parameters for 21 classes (Table 2 of the paper). With ImageNet weights, fc6 and
fc7 are decimated from VGG16's 7x7x4096 fully connected layers: every 4th filter, every 3rd tap.

``set_refiner(callable)`` installs a post-processing step ``(image, logits) -> logits`` that runs in eval
mode after the upsampling: ``DenseCRFRefiner`` is the paper's fully connected CRF (pixelseg's
``refiners.dense_crf``), any other callable works too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..refiners.dense_crf import IMAGENET_MEAN, IMAGENET_STD, DenseCRFRefiner
from .base import SegmentationModel
from .encoders.vgg import atrous_vgg16, timm_fc_weights
from .modules.heads import PostProcessed
from .registry import register

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DeepLabV1", "DenseCRFRefiner", "deeplabv1"]


class DeepLabV1(PostProcessed, SegmentationModel):
    """DeepLab-LargeFOV: atrous VGG16 (``atrous_vgg16``) + fc6 (3x3, dilation 12, 1024) + fc7 (1x1, 1024)
    + fc8, stride 8."""

    output_stride = 8

    def __init__(self, num_classes: int, in_channels: int = 3, *, fc_channels: int = 1024,
                 fc6_dilation: int = 12, dropout: float = 0.5, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.encoder = atrous_vgg16(in_channels)
        self.fc6 = nn.Sequential(nn.Conv2d(512, fc_channels, 3, padding=fc6_dilation, dilation=fc6_dilation),
                                 nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.fc7 = nn.Sequential(nn.Conv2d(fc_channels, fc_channels, 1), nn.ReLU(inplace=True),
                                 nn.Dropout2d(dropout))
        self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        nn.init.normal_(self.fc8.weight, std=0.01)  # the paper's initialisation of the new classifier
        nn.init.zeros_(self.fc8.bias)
        if encoder_weights is not None:
            self.load_timm_vgg16(encoder_weights)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.fc8(self.fc7(self.fc6(self.encoder(x)[-1].pooled)))
        return self.post_process(x, F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False))

    def load_timm_vgg16(self, weights: str) -> None:
        """Copy ImageNet VGG16 (timm ``vgg16``): the 13 convolutions as they are, fc6/fc7 decimated."""
        state = self.encoder.load_timm_vgg("vgg16", weights)
        (w6, b6), (w7, b7) = timm_fc_weights(state, weights)
        fc6, fc7 = self.fc6[0], self.fc7[0]
        out_step = w6.shape[0] // fc6.out_channels
        tap_step = (w6.shape[-1] - 1) // (fc6.kernel_size[0] - 1)
        with torch.no_grad():
            fc6.weight.copy_(w6[::out_step, :, ::tap_step, ::tap_step])
            fc7.weight.copy_(w7[::out_step, ::out_step])
            for fc, bias in ((fc6, b6), (fc7, b7)):
                if bias is not None:
                    fc.bias.copy_(bias[::out_step])


@register("deeplabv1", paper="Chen et al., Semantic Image Segmentation with Deep Convolutional Nets and "
                             "Fully Connected CRFs (DeepLab-LargeFOV), ICLR 2015, arXiv:1412.7062")
def deeplabv1(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
              fc_channels: int = 1024, fc6_dilation: int = 12, dropout: float = 0.5) -> DeepLabV1:
    return DeepLabV1(num_classes, in_channels, fc_channels=fc_channels, fc6_dilation=fc6_dilation,
                     dropout=dropout, encoder_weights=encoder_weights)
