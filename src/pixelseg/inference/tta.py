"""Test-time augmentation: multi-scale, horizontal-flip and quarter-turn averaging of logits, for any model.

The image is resized by each scale (and, with ``flip``, also mirrored left-right; with ``rotate``, also
turned by 90, 180 and 270 degrees), the model runs on every variant with
:func:`~pixelseg.inference.forward.forward_whole` (so valid-convolution models still cover the whole
image), each logit map is turned and flipped back and resized bilinearly to the input size, and the maps
are averaged. This is the multi-scale inference of DeepLab v2/v3 (Chen et al., 2017, arXiv:1606.00915 §4
and arXiv:1706.05587 §4.3: "average the predictions" over scales {0.5, 0.75, 1, 1.25, 1.5, 1.75} and
left-right flips) and of PSPNet (Zhao et al., 2017, arXiv:1612.01105 §5.2). ``rotate`` with ``flip``
averages the eight symmetries of the square, the original and seven turned or mirrored versions: our
reading of U-Net's ISBI 2012 result, "averaged over 7 rotated versions of the input data" (Ronneberger
et al., 2015, arXiv:1505.04597 §3), whose training had made the network invariant to them.

A model that fuses scales itself — it defines ``multi_scale_logits(images, scales)``, as hierarchical
multi-scale attention does with its learned attention (Tao et al., 2020, arXiv:2005.10821, §3.2) — is
given the requested scales through that hook, and only the flip is averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from .forward import forward_whole


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The scales as floats; one clear error for an empty list or a non-positive scale."""
    values = tuple(float(s) for s in scales)
    if not values or any(not s > 0 for s in values):
        raise PixelsegError(f"test-time scales must be a non-empty list of positive numbers, not {list(scales)}")
    return values


def parse_scales(text: str) -> tuple[float, ...]:
    """Scales from the command line: ``"0.75,1,1.25"`` or ``"0.75 1 1.25"``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PixelsegError(f"--tta-scales: expected numbers like '0.75,1,1.25', not '{text}'") from None
    return check_scales(values)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _fuses_scales(model: nn.Module) -> bool:
    """Whether the model merges scales itself: it defines ``multi_scale_logits(images, scales) -> logits``
    (HMSA's learned attention)."""
    return callable(getattr(model, "multi_scale_logits", None))


def _one_view(model: nn.Module, images: Tensor, scales: tuple[float, ...]) -> list[Tensor]:
    """Logits at the input size for every scale (one map when the model fuses the scales itself)."""
    size = images.shape[-2:]
    if _fuses_scales(model):
        return [_resize(model.multi_scale_logits(images, scales), size)]
    return [_resize(forward_whole(model, _resize(images, _scaled_size(size, s))), size) for s in scales]


def symmetries(flip: bool, rotate: bool) -> list[tuple[bool, int]]:
    """The views averaged, as ``(mirrored, quarter_turns)``: the image itself first, then the left-right
    mirror (``flip``), the quarter turns (``rotate``) or all eight symmetries of the square (both)."""
    return [(mirrored, turns) for mirrored in ((False, True) if flip else (False,))
            for turns in (range(4) if rotate else (0,))]


def symmetry_logits(model: nn.Module, images: Tensor, mirrored: bool, turns: int,
                    scales: Sequence[float] = (1.0,)) -> list[Tensor]:
    """The logits of one symmetry of ``images`` (mirrored left-right, then turned ``turns`` quarter turns),
    turned and mirrored back so that they line up with ``images``: one map per scale."""
    view = images.flip(-1) if mirrored else images
    view = torch.rot90(view, turns, dims=(-2, -1)) if turns else view
    maps: list[Tensor] = []
    for logits in _one_view(model, view, check_scales(scales)):
        logits = torch.rot90(logits, -turns, dims=(-2, -1)) if turns else logits
        maps.append(logits.flip(-1) if mirrored else logits)
    return maps


def tta_logits(model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
               rotate: bool = False) -> Tensor:
    """Logits ``(B, C, H, W)`` (or ``(B, C, D, H, W)``: flips and turns act on the last two axes) averaged
    over ``scales``, with ``flip`` the left-right mirror and with ``rotate`` the quarter turns.

    ``scales=(1.0,), flip=False, rotate=False`` is exactly the plain whole-image forward pass. The caller
    chooses ``model.eval()`` and ``torch.no_grad()``; nothing here changes the model's mode.
    """
    maps = [logits for mirrored, turns in symmetries(flip, rotate)
            for logits in symmetry_logits(model, images, mirrored, turns, scales)]
    if len(maps) == 1:
        return maps[0]
    return torch.stack(maps).mean(0)


class TestTimeAugmented(nn.Module):
    """A model whose forward pass is :func:`tta_logits` — drop-in for evaluation loops."""

    __test__ = False  # not a pytest class

    def __init__(self, model: nn.Module, scales: Sequence[float] = (1.0,), flip: bool = False,
                 rotate: bool = False) -> None:
        super().__init__()
        self.model = model
        self.scales = check_scales(scales)
        self.flip = flip
        self.rotate = rotate

    def forward(self, images: Tensor) -> Tensor:
        return tta_logits(self.model, images, self.scales, self.flip, self.rotate)
