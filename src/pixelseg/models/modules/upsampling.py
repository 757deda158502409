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

Every operator also works on volumes: ``make_upsample(..., dims=3)`` builds its 3D form for ``(B, C, D, H,
W)`` tensors (V-Net), where ``"bilinear"`` interpolates trilinearly, the cells are ``factor³`` cubes, the
learned kernels are 3D and ``output_size`` is (D, H, W).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import PixelsegError, closest

UpsampleKind = Literal["nearest", "bed_of_nails", "bilinear", "max_unpool", "transposed", "resize_conv"]
UPSAMPLING_KINDS: tuple[str, ...] = ("nearest", "bed_of_nails", "bilinear", "max_unpool", "transposed",
                                     "resize_conv")


def _target_size(x: Tensor, factor: int, dims: int, output_size: tuple[int, ...] | None) -> tuple[int, ...]:
    # Sizes stay as they come (no int()): under the ONNX tracer they are traced values, and int() would
    # freeze the size seen while tracing into the exported graph.
    if output_size is None:
        return tuple(s * factor for s in x.shape[-dims:])
    if len(output_size) != dims:
        raise ValueError(f"output_size {tuple(output_size)} must have {dims} entries for {dims}D upsampling")
    return tuple(output_size)


def _check_dims(dims: int) -> int:
    if dims not in (2, 3):
        raise ValueError(f"upsampling works on 2D images or 3D volumes, not dims={dims}")
    return dims


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class Upsample(nn.Module):
    """Base class: ``forward(x, indices=None, output_size=None)``; ``needs_indices`` tells the decoder
    whether it must keep its encoder's max-pooling indices."""

    needs_indices: bool = False
    has_kernel: bool = False  # learned operators set their own output width

    def __init__(self, in_channels: int, out_channels: int, factor: int, *, dims: int = 2) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.factor = in_channels, out_channels, factor
        self.dims = _check_dims(dims)
        # Parameter-free operators keep the width; a 1x1 convolution changes it if asked to.
        self.project = (_CONV[dims](in_channels, out_channels, 1)
                        if in_channels != out_channels and not self.has_kernel else None)

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, indices: Tensor | None = None,
                output_size: tuple[int, ...] | None = None) -> Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"{self.dims}D upsampling takes (B, C, {', '.join('DHW'[-self.dims:])}) tensors, "
                             f"not shape {tuple(x.shape)}")
        y = self.upsample(x, indices, _target_size(x, self.factor, self.dims, output_size))
        return self.project(y) if self.project is not None else y

    def extra_repr(self) -> str:
        extra = "" if self.dims == 2 else f", dims={self.dims}"
        return f"{self.in_channels}, {self.out_channels}, factor={self.factor}{extra}"


class NearestUpsample(Upsample):
    """Copies each value into a ``factor x factor`` block (a ``factor³`` cube in 3D)."""

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
        return F.interpolate(x, size=size, mode="nearest")


class BedOfNailsUpsample(Upsample):
    """Each value at the top-left (front) corner of its ``factor x factor`` cell, zeros elsewhere."""

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
        out = x.new_zeros(*x.shape[:-self.dims], *size)
        f = self.factor
        kept = tuple(slice(0, min(n, -(-s // f))) for n, s in zip(x.shape[-self.dims:], size, strict=True))
        out[(..., *(slice(None, None, f),) * self.dims)][(..., *kept)] = x[(..., *kept)]
        return out


class BilinearUpsample(Upsample):
    """Bilinear (trilinear in 3D) interpolation with the pixel-centre convention (``align_corners=False``)."""

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear" if self.dims == 2 else "trilinear", align_corners=False)


class MaxUnpoolUpsample(Upsample):
    """Puts each value back where the encoder's max-pooling found it (``indices``), zeros elsewhere."""

    needs_indices = True

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
        if indices is None:
            raise ValueError("max_unpool upsampling needs the max-pooling indices of its encoder stage")
        if self.dims == 2 and torch.jit.is_tracing():  # F.max_unpool2d's Python size check fails on traced sizes
            return torch._C._nn.max_unpool2d(x, indices, list(size))
        unpool = F.max_unpool2d if self.dims == 2 else F.max_unpool3d
        return unpool(x, indices, kernel_size=self.factor, stride=self.factor, output_size=size)


class TransposedConvUpsample(Upsample):
    """A learned transposed convolution, stride ``factor``; output exactly ``factor`` times the input."""

    has_kernel = True

    def __init__(self, in_channels: int, out_channels: int, factor: int, kernel_size: int | None = None,
                 bias: bool = True, *, dims: int = 2) -> None:
        super().__init__(in_channels, out_channels, factor, dims=dims)
        kernel_size = factor if kernel_size is None else kernel_size
        if kernel_size < factor:
            raise ValueError(f"a transposed convolution with stride {factor} needs kernel_size >= {factor}")
        padding = (kernel_size - factor + 1) // 2
        self.conv = _CONV_TRANSPOSE[dims](in_channels, out_channels, kernel_size, stride=factor,
                                          padding=padding, output_padding=factor - kernel_size + 2 * padding,
                                          bias=bias)

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
        if torch.compiler.is_exporting():  # output_size's range check would pin torch.export's symbolic sizes
            return self._widest(x)[(..., *(slice(0, side) for side in size))]
        return self.conv(x, output_size=list(size))

    def _widest(self, x: Tensor) -> Tensor:
        """The transposed convolution at the largest output padding (stride - 1). Output padding only appends
        rows (columns) at the end, so every size ``output_size`` may ask for is a prefix of this output."""
        conv = self.conv
        transposed = F.conv_transpose2d if self.dims == 2 else F.conv_transpose3d
        return transposed(x, conv.weight, conv.bias, conv.stride, conv.padding, self.factor - 1, conv.groups,
                          conv.dilation)


class ResizeConvUpsample(Upsample):
    """Nearest-neighbour resize, then a learned convolution (Odena et al.'s checkerboard-free upsampling)."""

    has_kernel = True

    def __init__(self, in_channels: int, out_channels: int, factor: int, kernel_size: int | None = None,
                 bias: bool = True, *, dims: int = 2) -> None:
        super().__init__(in_channels, out_channels, factor, dims=dims)
        kernel_size = 3 if kernel_size is None else kernel_size
        self.conv = _CONV[dims](in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def upsample(self, x: Tensor, indices: Tensor | None, size: tuple[int, ...]) -> Tensor:
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
                  kernel_size: int | None = None, bias: bool = True, dims: int = 2) -> Upsample:
    """Build the upsampling operator ``kind`` (one of ``UPSAMPLING_KINDS``).

    ``out_channels`` defaults to ``in_channels``. ``kernel_size`` and ``bias`` apply to the learned
    operators (``"transposed"``: kernel ``factor`` by default; ``"resize_conv"``: 3). ``dims=3`` builds the
    volumetric form. Call the result as ``up(x)``, ``up(x, indices)`` for ``"max_unpool"``, and with
    ``output_size=(H, W)`` (``(D, H, W)``) for an exact size.
    """
    operator = _OPERATORS[check_upsampling(kind)]
    out_channels = in_channels if out_channels is None else out_channels
    if operator in (TransposedConvUpsample, ResizeConvUpsample):
        return operator(in_channels, out_channels, factor, kernel_size=kernel_size, bias=bias, dims=dims)
    if kernel_size is not None:
        raise ValueError(f"upsampling '{kind}' has no kernel; kernel_size applies to transposed/resize_conv")
    return operator(in_channels, out_channels, factor, dims=dims)


def transposed_overlap_counts(kernel_size: int, stride: int, input_size: int) -> Tensor:
    """How many input pixels reach each output pixel of a 2D transposed convolution (no padding).

    The cause of checkerboard artefacts: with stride 2, a 3x3 kernel gives counts alternating 1, 2, 4 in
    the interior, a 4x4 kernel gives 4 everywhere in the interior.
    """
    ones = torch.ones(1, 1, input_size, input_size)
    return F.conv_transpose2d(ones, torch.ones(1, 1, kernel_size, kernel_size), stride=stride)[0, 0]
