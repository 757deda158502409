"""Test-time augmentation: multi-scale and horizontal-flip averaging of logits, for any model.

The image is resized by each scale (and, with ``flip``, also mirrored left-right), the model runs on
every variant with :func:`~pixelseg.inference.forward.forward_whole` (so valid-convolution models still
cover the whole image), each logit map is flipped back and resized bilinearly to the input size, and
the maps are averaged. This is the multi-scale inference of DeepLab v2/v3 (Chen et al., 2017,
arXiv:1606.00915 §4 and arXiv:1706.05587 §4.3: "average the predictions" over scales {0.5, 0.75, 1,
1.25, 1.5, 1.75} and left-right flips) and of PSPNet (Zhao et al., 2017, arXiv:1612.01105 §5.2).

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


def tta_logits(model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Logits ``(B, C, H, W)`` averaged over ``scales`` and, with ``flip``, the left-right mirror.

    ``scales=(1.0,), flip=False`` is exactly the plain whole-image forward pass. The caller chooses
    ``model.eval()`` and ``torch.no_grad()``; nothing here changes the model's mode.
    """
    scales = check_scales(scales)
    maps = _one_view(model, images, scales)
    if flip:
        maps += [m.flip(-1) for m in _one_view(model, images.flip(-1), scales)]
    if len(maps) == 1:
        return maps[0]
    return torch.stack(maps).mean(0)


class TestTimeAugmented(nn.Module):
    """A model whose forward pass is :func:`tta_logits` — drop-in for evaluation loops."""

    __test__ = False  # not a pytest class

    def __init__(self, model: nn.Module, scales: Sequence[float] = (1.0,), flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.scales = check_scales(scales)
        self.flip = flip

    def forward(self, images: Tensor) -> Tensor:
        return tta_logits(self.model, images, self.scales, self.flip)
