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
``classical.dense_crf``), any other callable works too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel
from .encoders import create_timm
from .fcn import VGG16_LAYOUT
from .registry import register

Refiner = Callable[[Tensor, Tensor], Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseCRFRefiner:
    """The paper's post-processing: mean-field inference in a fully connected CRF over the scores.

    The model sees normalised images; the CRF's appearance kernel needs the RGB values, so the image is
    un-normalised with ``mean``/``std`` (pixelseg's defaults: ImageNet statistics) back to 0-255. The
    unaries are ``-log softmax(logits)``; the returned logits are the log of the CRF marginals.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 config: object | None = None) -> None:
        from ..refiners.dense_crf import DenseCRFConfig

        self.mean, self.std = mean, std
        self.config = config or DenseCRFConfig()

    def __call__(self, image: Tensor, logits: Tensor) -> Tensor:
        from ..refiners.dense_crf import dense_crf, unary_from_probabilities

        if image.shape[1] != 3:
            raise ValueError(f"the dense CRF needs RGB images, got {image.shape[1]} channels")
        mean = torch.tensor(self.mean, device=image.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=image.device).view(3, 1, 1)
        refined = []
        for picture, scores in zip(image, logits, strict=True):
            rgb = ((picture * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            unary = unary_from_probabilities(torch.softmax(scores.float(), dim=0))
            marginals = dense_crf(unary, rgb, self.config)
            refined.append(torch.log(marginals.clamp(min=1e-8)).to(logits.dtype))
        return torch.stack(refined)


class AtrousVGG16(nn.Module):
    """VGG16 conv1-conv5 with pool4/pool5 at stride 1 and conv5 dilated by 2: features at stride 8."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        blocks, channels = [], in_channels
        for index, widths in enumerate(VGG16_LAYOUT):
            dilation = 2 if index == 4 else 1
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                           nn.ReLU(inplace=True)]
                channels = width
            pool_stride = 2 if index < 3 else 1
            layers.append(nn.MaxPool2d(3, stride=pool_stride, padding=1, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


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


class DeepLabV1(PostProcessed, SegmentationModel):
    """DeepLab-LargeFOV: atrous VGG16 + fc6 (3x3, dilation 12, 1024) + fc7 (1x1, 1024) + fc8, stride 8."""

    output_stride = 8

    def __init__(self, num_classes: int, in_channels: int = 3, *, fc_channels: int = 1024,
                 fc6_dilation: int = 12, dropout: float = 0.5, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.backbone = AtrousVGG16(in_channels)
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
        scores = self.fc8(self.fc7(self.fc6(self.backbone(x))))
        return self.post_process(x, F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False))

    def load_timm_vgg16(self, weights: str) -> None:
        """Copy ImageNet VGG16 (timm ``vgg16``): the 13 convolutions as they are, fc6/fc7 decimated."""
        vgg = create_timm("vgg16", in_channels=self.backbone.blocks[0][0].in_channels, weights=weights)
        sources = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
        targets = [m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)]
        fc6, fc7 = self.fc6[0], self.fc7[0]
        out_step = vgg.pre_logits.fc1.out_channels // fc6.out_channels
        tap_step = (vgg.pre_logits.fc1.kernel_size[0] - 1) // (fc6.kernel_size[0] - 1)
        with torch.no_grad():
            for source, target in zip(sources, targets, strict=True):
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
            fc6.weight.copy_(vgg.pre_logits.fc1.weight[::out_step, :, ::tap_step, ::tap_step])
            fc6.bias.copy_(vgg.pre_logits.fc1.bias[::out_step])
            fc7.weight.copy_(vgg.pre_logits.fc2.weight[::out_step, ::out_step])
            fc7.bias.copy_(vgg.pre_logits.fc2.bias[::out_step])


@register("deeplabv1", paper="Chen et al., Semantic Image Segmentation with Deep Convolutional Nets and "
                             "Fully Connected CRFs (DeepLab-LargeFOV), ICLR 2015, arXiv:1412.7062")
def deeplabv1(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
              fc_channels: int = 1024, fc6_dilation: int = 12, dropout: float = 0.5) -> DeepLabV1:
    return DeepLabV1(num_classes, in_channels, fc_channels=fc_channels, fc6_dilation=fc6_dilation,
                     dropout=dropout, encoder_weights=encoder_weights)
