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


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "constant") -> tuple[Tensor, tuple[int, int]]:
    """Pad ``x`` at the bottom/right so that H and W are multiples of ``multiple``.

    Returns the padded tensor and the original (H, W), for ``crop_to`` afterwards. While being traced
    (``torch.jit.trace``, ONNX export) the pad is always emitted, with widths computed from the traced
    size (zero when it is already a multiple): a Python branch on the size would be frozen into the graph.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if torch.jit.is_tracing() or pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (height, width)


def crop_to(x: Tensor, size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> Tensor:
    """Crop the spatial dims of ``x`` to ``size`` starting at ``offset`` (top, left)."""
    top, left = offset
    return x[..., top:top + size[0], left:left + size[1]]


def center_crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop the spatial dims of ``x`` around their centre to ``size`` (U-Net's crop-and-concatenate)."""
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return crop_to(x, size, (top, left))
