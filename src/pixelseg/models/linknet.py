"""LinkNet (Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
Segmentation", VCIP 2017, arXiv:1707.03718).

The one idea: link each encoder block's input to the output of its decoder block by ADDITION, so the
decoder recovers the spatial detail lost by downsampling without learning it again and without the extra
width of U-Net's concatenation. This keeps the network light: 11.5M parameters with a ResNet18 encoder.

Encoder: ResNet18 (timm; pretrainable from a local safetensors file or ``"imagenet"``): the initial block
(7x7 conv stride 2, 3x3 max-pool stride 2) and four residual blocks of 64, 128, 256, 512 channels at
strides 4, 8, 16, 32. Decoder block ``m → n`` (Fig. 3): 1x1 conv ``m → m/4``, 3x3 full-convolution
(transposed, stride 2) ``m/4 → m/4``, 1x1 conv ``m/4 → n``, each followed by batch norm and ReLU. Decoder
block 4 (512 → 256) is added to encoder block 3's output, block 3 (256 → 128) to block 2's, block 2
(128 → 64) to block 1's; block 1 (64 → 64; stride 1, since ResNet18's block 1 does not downsample, as in
the authors' PyTorch code) feeds the final block: 3x3 full-conv stride 2 (64 → 32), 3x3
conv (32 → 32), 2x2 full-conv stride 2 (32 → classes). Inputs are padded to a multiple of 32 and the
logits cropped back.

``upsampling`` swaps the decoder's 3x3 full-convolutions for any operator of ``upsampling.py``
(``"transposed"`` is the paper's; ``"resize_conv"`` avoids checkerboard artefacts).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import SegmentationModel
from .encoders.timm import TimmEncoder
from .modules.blocks import ConvBnAct, crop_to, pad_to_multiple
from .modules.upsampling import check_upsampling, make_upsample
from .registry import register

_LEARNED_UPSAMPLING = ("transposed", "resize_conv")


def upsample_x2(kind: str, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool) -> nn.Module:
    """A 2x upsampling operator; ``kernel_size`` applies to the learned kinds (the paper's full-conv)."""
    if check_upsampling(kind) == "max_unpool":
        raise ValueError("LinkNet's decoder has no max-pooling indices to unpool with; "
                         "choose transposed, resize_conv, bilinear, nearest or bed_of_nails")
    return make_upsample(kind, in_channels, out_channels, 2, bias=bias,
                         kernel_size=kernel_size if kind in _LEARNED_UPSAMPLING else None)


class LinkNetDecoderBlock(nn.Module):
    """1x1 conv ``m → m/4``, 3x3 full-conv ``m/4 → m/4`` (stride 2, or 1 for block 1), 1x1 conv
    ``m/4 → n``; batch norm and ReLU after each (convolutions before batch norm have no bias)."""

    def __init__(self, in_channels: int, out_channels: int, *, upsample: bool = True,
                 upsampling: str = "transposed") -> None:
        super().__init__()
        mid = in_channels // 4
        self.upsample = upsample
        self.reduce = ConvBnAct(in_channels, mid, 1)
        self.up = (upsample_x2(upsampling, mid, mid, kernel_size=3, bias=False) if upsample
                   else nn.ConvTranspose2d(mid, mid, 3, padding=1, bias=False))
        self.up_norm = nn.Sequential(nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.expand = ConvBnAct(mid, out_channels, 1)

    def forward(self, x: Tensor, output_size: tuple[int, int]) -> Tensor:
        x = self.reduce(x)
        x = self.up(x, output_size=output_size) if self.upsample else self.up(x)
        return self.expand(self.up_norm(x))


class LinkNet(SegmentationModel):
    """LinkNet on a timm encoder (ResNet18 by default, as in the paper)."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, encoder: str = "resnet18",
                 encoder_weights: str | None = None, upsampling: str = "transposed") -> None:
        super().__init__()
        probe = TimmEncoder(encoder, in_channels=in_channels)  # which feature maps sit at strides 4..32
        indices = tuple(i for i, r in enumerate(probe.reductions) if r in (4, 8, 16, 32))
        if [probe.reductions[i] for i in indices] != [4, 8, 16, 32]:
            raise ValueError(f"encoder '{encoder}' must give one feature map at each stride 4, 8, 16, 32; "
                             f"it gives strides {probe.reductions}")
        del probe
        self.encoder = TimmEncoder(encoder, in_channels=in_channels, weights=encoder_weights,
                                   out_indices=indices)
        widths = self.encoder.channels  # (64, 128, 256, 512) for ResNet18
        # Decoder block i maps encoder block i's width to encoder block i-1's (block 1 keeps its width).
        targets = [widths[0], *widths[:-1]]
        # With ResNet18 encoder block 1 keeps the stride of the initial block (4), so decoder block 1
        # does not upsample (a stride-1 full-conv, as in the authors' code); blocks 2-4 upsample by 2.
        self.decoder = nn.ModuleList(
            LinkNetDecoderBlock(m, n, upsample=level > 0, upsampling=upsampling)
            for level, (m, n) in enumerate(zip(widths, targets, strict=True)))
        self.final_up1 = upsample_x2(upsampling, widths[0], 32, kernel_size=3, bias=False)
        self.final_norm = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.final_conv = ConvBnAct(32, 32, 3)
        self.final_up2 = upsample_x2(upsampling, 32, num_classes, kernel_size=2, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, 32)
        features = self.encoder(x)
        y = features[-1]
        for level in reversed(range(1, len(features))):
            y = self.decoder[level](y, tuple(features[level - 1].shape[-2:])) + features[level - 1]
        y = self.decoder[0](y, tuple(y.shape[-2:]))
        half = (x.shape[-2] // 2, x.shape[-1] // 2)
        y = self.final_conv(self.final_norm(self.final_up1(y, output_size=half)))
        logits = self.final_up2(y, output_size=tuple(x.shape[-2:]))
        return crop_to(logits, size)


@register("linknet", paper="Chaurasia & Culurciello, LinkNet, VCIP 2017, arXiv:1707.03718")
def linknet(num_classes: int, in_channels: int = 3, *, encoder: str | None = None,
            encoder_weights: str | None = None, **kwargs) -> LinkNet:
    """The paper's LinkNet (ResNet18 encoder) by default; ``encoder`` names any timm backbone."""
    return LinkNet(num_classes, in_channels, encoder=encoder or "resnet18", encoder_weights=encoder_weights,
                   **kwargs)
