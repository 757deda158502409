"""Building blocks shared by the models: conv-bn-act, padding to a stride multiple, cropping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBnAct(nn.Sequential):
    """``Conv2d → BatchNorm2d → ReLU`` (the conv has no bias when followed by batch norm)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, batch_norm: bool = True,
                 activation: type[nn.Module] | None = nn.ReLU) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                             padding=padding, dilation=dilation, groups=groups,
                                             bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation is not None:
            layers.append(activation(inplace=True) if activation in (nn.ReLU, nn.ReLU6) else activation())
        super().__init__(*layers)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "constant", *, dims: int = 2
                    ) -> tuple[Tensor, tuple[int, ...]]:
    """Pad ``x`` at the end of its last ``dims`` axes (bottom/right: H and W; with ``dims=3`` also the
    depth D of a volume) so that each is a multiple of ``multiple``.

    Returns the padded tensor and the original sizes, for ``crop_to`` afterwards. While being traced
    (``torch.jit.trace``, ``torch.export``: ONNX export) the pad is always emitted, with widths computed from
    the traced size (zero when it is already a multiple): a Python branch on the size would be frozen into
    the graph.
    """
    sizes = tuple(x.shape[-dims:])
    pads = [(-side) % multiple for side in sizes]
    if torch.jit.is_tracing() or torch.compiler.is_exporting() or any(pads):
        x = F.pad(x, [width for pad in reversed(pads) for width in (0, pad)], mode=mode)
    return x, sizes


def crop_to(x: Tensor, size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> Tensor:
    """Crop the spatial dims of ``x`` to ``size`` starting at ``offset`` (top, left)."""
    top, left = offset
    return x[..., top:top + size[0], left:left + size[1]]


def center_crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop the spatial dims of ``x`` around their centre to ``size`` (U-Net's crop-and-concatenate)."""
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return crop_to(x, size, (top, left))
