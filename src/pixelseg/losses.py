"""Segmentation losses. ``build_loss`` makes a (weighted sum of) loss(es) from config.

Every loss takes logits ``(B, C, H, W)`` and integer targets ``(B, H, W)`` and respects ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import PixelsegError, closest

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        LOSSES[name] = cls
        return cls

    return wrap


@register_loss("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy with optional class weights; pixels equal to ``ignore_index`` do not count.

    With class weights the mean is torch's: the sum of weighted losses divided by the sum of the
    weights of the counted pixels.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target.long(), weight=self.class_weights,
                               ignore_index=self.ignore_index)


@register_loss("dice")
class DiceLoss(nn.Module):
    """Soft Dice loss ``1 − mean_c (2 Σ p·g + s) / (Σ p + Σ g + s)`` over softmax probabilities.

    Ignored pixels are removed from both sums (their probabilities and one-hot targets are zeroed), so
    the smoothing term ``s`` never lets them in. Classes absent from the batch's ground truth still
    count (a prediction of them is penalised); sums run over the whole batch.
    """

    def __init__(self, smooth: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(1)
        valid = (target != self.ignore_index).unsqueeze(1)
        onehot = F.one_hot(torch.where(valid.squeeze(1), target, 0).long(), num_classes)
        onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid
        probs = probs * valid
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        return 1 - dice.mean()


class WeightedSum(nn.Module):
    """``Σ_k w_k · loss_k`` — e.g. BCE + Dice as UNet++ trains."""

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses, strict=True))


def build_loss(terms: Sequence[dict[str, Any]], ignore_index: int = 255) -> nn.Module:
    """Build a loss from ``[{"name": ..., "weight": ..., **params}, ...]``; one term is returned as is."""
    modules, weights = [], []
    for term in terms:
        params = dict(term)
        name = params.pop("name")
        weight = float(params.pop("weight", 1.0))
        if name not in LOSSES:
            raise PixelsegError(f"unknown loss '{name}'{closest(name, LOSSES)}")
        params.setdefault("ignore_index", ignore_index)
        try:
            modules.append(LOSSES[name](**params))
        except TypeError as err:
            raise PixelsegError(f"loss '{name}': {err}") from None
        weights.append(weight)
    if len(modules) == 1 and weights[0] == 1.0:
        return modules[0]
    return WeightedSum(modules, weights)
