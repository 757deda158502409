"""Upsampling operators for decoders, selectable by name: ``make_upsample(kind, in_ch, out_ch, factor)``.

A decoder that grows a feature map by ``factor`` can use any of these (the course's list, plus Odena et
al.'s resize-convolution):

``"nearest"``
    Nearest neighbour: every input value is copied into a ``factor x factor`` block. No parameters.
``"bed_of_nails"``
    Every input value goes to the top-left corner of its ``factor x factor`` cell, the rest is zero.
    No parameters (it is max-unpooling with the indices fixed at the top-left corner).
``"bilinear"``
    Bilinear interpolation (``align_corners=False``, the pixel-centre convention). No parameters.
``"max_unpool"``
    Max-unpooling: every value goes back to the position its encoder's max-pooling took it from
    (``nn.MaxPool2d(..., return_indices=True)``), the rest is zero. Needs ``indices`` in ``forward``
    (SegNet, DeconvNet). No parameters.
``"transposed"``
    A learned transposed convolution with stride ``factor`` ("deconvolution", "up-convolution").
    ``kernel_size`` defaults to ``factor`` (U-Net's 2x2 up-convolution, no overlap); padding and output
    padding are chosen so that the output is exactly ``factor`` times the input. A kernel size that is
    not a multiple of the stride overlaps unevenly and leaves checkerboard artefacts (see
    ``transposed_overlap_counts``).
``"resize_conv"``
    Resize-convolution (Odena, Dumoulin & Olah, "Deconvolution and Checkerboard Artifacts", Distill
    2016): nearest-neighbour upsampling, then a learned ``kernel_size x kernel_size`` (3x3) convolution.
    Every output pixel sees the same number of input values, so there is no checkerboard.

The parameter-free operators keep the channel count; when ``out_channels`` differs they are followed by a
learned 1x1 convolution. Every operator's ``forward(x, indices=None, output_size=None)`` takes an optional
exact ``output_size`` (H, W) so that a decoder can match an odd-sized skip connection.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError, closest

UpsampleKind = Literal["nearest", "bed_of_nails", "bilinear", "max_unpool", "transposed", "resize_conv"]
UPSAMPLING_KINDS: tuple[str, ...] = ("nearest", "bed_of_nails", "bilinear", "max_unpool", "transposed",
                                     "resize_conv")


def _target_size(x: Tensor, factor: int, output_size: tuple[int, int] | None) -> tuple[int, int]:
    if output_size is None:
        return x.shape[-2] * factor, x.shape[-1] * factor
    return int(output_size[0]), int(output_size[1])


class Upsample(nn.Module):
    """Base class: ``forward(x, indices=None, output_size=None)``; ``needs_indices`` tells the decoder
    whether it must keep its encoder's max-pooling indices."""

    needs_indices: bool = False
    has_kernel: bool = False  # learned operators set their own output width

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.factor = in_channels, out_channels, factor
        # Parameter-free operators keep the width; a 1x1 convolution changes it if asked to.
        self.project = (nn.Conv2d(in_channels, out_channels, 1)
                        if in_channels != out_channels and not self.has_kernel else None)

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, indices: Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> Tensor:
        y = self.upsample(x, indices, _target_size(x, self.factor, output_size))
        return self.project(y) if self.project is not None else y

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, factor={self.factor}"


class NearestUpsample(Upsample):
    """Copies each value into a ``factor x factor`` block."""

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="nearest")


class BedOfNailsUpsample(Upsample):
    """Each value at the top-left corner of its ``factor x factor`` cell, zeros elsewhere."""

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        out = x.new_zeros(*x.shape[:-2], *size)
        f = self.factor
        rows, cols = min(x.shape[-2], -(-size[0] // f)), min(x.shape[-1], -(-size[1] // f))
        out[..., ::f, ::f][..., :rows, :cols] = x[..., :rows, :cols]
        return out


class BilinearUpsample(Upsample):
    """Bilinear interpolation with the pixel-centre convention (``align_corners=False``)."""

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MaxUnpoolUpsample(Upsample):
    """Puts each value back where the encoder's max-pooling found it (``indices``), zeros elsewhere."""

    needs_indices = True

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        if indices is None:
            raise ValueError("max_unpool upsampling needs the max-pooling indices of its encoder stage")
        return F.max_unpool2d(x, indices, kernel_size=self.factor, stride=self.factor, output_size=size)


class TransposedConvUpsample(Upsample):
    """A learned transposed convolution, stride ``factor``; output exactly ``factor`` times the input."""

    has_kernel = True

    def __init__(self, in_channels: int, out_channels: int, factor: int, kernel_size: int | None = None,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, factor)
        kernel_size = factor if kernel_size is None else kernel_size
        if kernel_size < factor:
            raise ValueError(f"a transposed convolution with stride {factor} needs kernel_size >= {factor}")
        padding = (kernel_size - factor + 1) // 2
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=factor,
                                       padding=padding, output_padding=factor - kernel_size + 2 * padding,
                                       bias=bias)

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        return self.conv(x, output_size=list(size))


class ResizeConvUpsample(Upsample):
    """Nearest-neighbour resize, then a learned convolution (Odena et al.'s checkerboard-free upsampling)."""

    has_kernel = True

    def __init__(self, in_channels: int, out_channels: int, factor: int, kernel_size: int | None = None,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, factor)
        kernel_size = 3 if kernel_size is None else kernel_size
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


_OPERATORS: dict[str, type[Upsample]] = {
    "nearest": NearestUpsample,
    "bed_of_nails": BedOfNailsUpsample,
    "bilinear": BilinearUpsample,
    "max_unpool": MaxUnpoolUpsample,
    "transposed": TransposedConvUpsample,
    "resize_conv": ResizeConvUpsample,
}


def check_upsampling(kind: str) -> str:
    """``kind`` if it names an operator, else a one-line ``PixelsegError`` suggesting the closest."""
    if kind not in _OPERATORS:
        raise PixelsegError(f"unknown upsampling '{kind}'{closest(kind, _OPERATORS)}; "
                            f"choose one of {', '.join(UPSAMPLING_KINDS)}")
    return kind


def make_upsample(kind: str, in_channels: int, out_channels: int | None = None, factor: int = 2, *,
                  kernel_size: int | None = None, bias: bool = True) -> Upsample:
    """Build the upsampling operator ``kind`` (one of ``UPSAMPLING_KINDS``).

    ``out_channels`` defaults to ``in_channels``. ``kernel_size`` and ``bias`` apply to the learned
    operators (``"transposed"``: kernel ``factor`` by default; ``"resize_conv"``: 3). Call the result as
    ``up(x)``, ``up(x, indices)`` for ``"max_unpool"``, and with ``output_size=(H, W)`` for an exact size.
    """
    operator = _OPERATORS[check_upsampling(kind)]
    out_channels = in_channels if out_channels is None else out_channels
    if operator in (TransposedConvUpsample, ResizeConvUpsample):
        return operator(in_channels, out_channels, factor, kernel_size=kernel_size, bias=bias)
    if kernel_size is not None:
        raise ValueError(f"upsampling '{kind}' has no kernel; kernel_size applies to transposed/resize_conv")
    return operator(in_channels, out_channels, factor)


def transposed_overlap_counts(kernel_size: int, stride: int, input_size: int) -> Tensor:
    """How many input pixels reach each output pixel of a 2D transposed convolution (no padding).

    The cause of checkerboard artefacts: with stride 2, a 3x3 kernel gives counts alternating 1, 2, 4 in
    the interior, a 4x4 kernel gives 4 everywhere in the interior.
    """
    ones = torch.ones(1, 1, input_size, input_size)
    return F.conv_transpose2d(ones, torch.ones(1, 1, kernel_size, kernel_size), stride=stride)[0, 0]
