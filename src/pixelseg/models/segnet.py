"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017, arXiv:1511.00561).

The one idea: the decoder upsamples with the *max-pooling indices* of the matching encoder stage
(max-unpooling), which gives a sparse map with the encoder's boundary positions, and then densifies it
with trainable convolutions. Nothing but the indices crosses from encoder to decoder, so the network is
small: no fully connected layers and no stored encoder feature maps.

Encoder: the 13 convolutions of VGG16 with batch norm (3x3, ReLU) in five stages, each followed by a
2x2 max-pooling that keeps its indices. Decoder: the mirror image, 13 convolutions with batch norm, each
stage starting with a 2x2 max-unpooling; the last convolution (``conv1_1_D`` in the reference Caffe
model) maps 64 channels straight to the class scores. With 3 input channels and 11 classes (CamVid)
the network has 29.44M trainable parameters, the paper's "29.5M" (its convolutions carry a bias that is
redundant before batch norm; we leave it out, 7,936 fewer parameters).

``encoder_weights`` loads timm's ImageNet ``vgg16_bn`` (``"imagenet"``) or a local safetensors file with
its state dict (at least the ``features.*`` tensors). ``upsampling`` swaps max-unpooling for any
operator of ``pixelseg.models.modules.upsampling``. Inputs of any size are zero-padded to a multiple of 32 and
the output is cropped back.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import SegmentationModel
from .encoders.vgg import VGG16_STAGE_DEPTHS, vgg16
from .modules.blocks import ConvBnAct, crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register


class SegNet(SegmentationModel):
    """VGG16-BN encoder, a mirrored decoder that upsamples with the encoder's pooling indices."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, base_channels: int = 64,
                 upsampling: str = "max_unpool", encoder_weights: str | None = None) -> None:
        super().__init__()
        self.stride = 2 ** len(VGG16_STAGE_DEPTHS)
        self.encoder = vgg16(in_channels, base_channels=base_channels)
        if encoder_weights is not None:
            self.encoder.load_timm_vgg("vgg16_bn", encoder_weights)
        widths = self.encoder.widths
        check_upsampling(upsampling)
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for stage in reversed(range(len(VGG16_STAGE_DEPTHS))):
            width, depth = widths[stage], VGG16_STAGE_DEPTHS[stage]
            self.upsamples.append(make_upsample(upsampling, width, width))
            layers = [ConvBnAct(width, width, 3) for _ in range(depth - 1)]
            # The last convolution of a stage narrows to the next stage's width; conv1_1_D is the classifier.
            layers.append(ConvBnAct(width, widths[stage - 1], 3) if stage > 0
                          else nn.Conv2d(width, num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.stride)
        stages = self.encoder(x)
        y = stages[-1][1]
        for (features, _, indices), upsample, convs in zip(reversed(stages), self.upsamples, self.decoder,
                                                           strict=True):
            y = convs(upsample(y, indices, output_size=tuple(features.shape[-2:])))
        return crop_to(y, size)


@register("segnet", paper="Badrinarayanan, Kendall & Cipolla, SegNet, TPAMI 2017, arXiv:1511.00561")
def segnet(num_classes: int, in_channels: int = 3, *, encoder_weights: str | None = None,
           **kwargs) -> SegNet:
    """The paper's SegNet: VGG16-BN encoder, max-unpooling decoder (``upsampling``, ``base_channels``)."""
    return SegNet(num_classes, in_channels, encoder_weights=encoder_weights, **kwargs)
