"""Whole-image forward passes that return logits the size of the input.

Same-padded models map H×W to H×W. Models with valid convolutions (the paper U-Net) shrink their
output; ``forward_whole`` mirrors the image at its borders so that the output covers it exactly — the
missing context is extrapolated by mirroring, as in the U-Net paper's overlap-tile strategy (Fig. 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.base import main_logits


def reflect_range(length: int, start: int, stop: int, device: torch.device | None = None) -> Tensor:
    """Source indices of positions ``start..stop-1`` of an axis of ``length`` mirrored at both ends.

    The edge pixel is not repeated (``... 2 1 | 0 1 2 ... n-1 | n-2 ...``); any window, however far
    outside the axis, maps back into it.
    """
    positions = torch.arange(start, stop, device=device)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    positions = positions.remainder(period)
    return torch.where(positions >= length, period - positions, positions)


def mirror_window(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """The ``height x width`` window of ``x`` (``(..., H, W)``) at ``(top, left)``, mirrored where outside."""
    rows = reflect_range(x.shape[-2], top, top + height, x.device)
    cols = reflect_range(x.shape[-1], left, left + width, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    return mirror_window(x, -top, -left, x.shape[-2] + top + bottom, x.shape[-1] + left + right)


def forward_whole(model: nn.Module, images: Tensor) -> Tensor:
    """Logits ``(B, C, H, W)`` for images ``(B, in_channels, H, W)``, whatever the model's padding."""
    height, width = images.shape[-2:]
    input_size_for = getattr(model, "input_size_for", None)
    if input_size_for is None:
        return main_logits(model(images))
    (in_h, in_w), (top, left) = input_size_for((height, width))
    if (in_h, in_w) == (height, width) and (top, left) == (0, 0):
        return main_logits(model(images))
    padded = mirror_pad(images, top, in_h - height - top, left, in_w - width - left)
    logits = main_logits(model(padded))
    return logits[..., :height, :width]
