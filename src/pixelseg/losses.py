"""Every pixelseg loss, 2D and 3D, in one place; ``build_loss`` makes a (weighted sum of) loss(es) from
config by the names in ``LOSSES``.

Every loss takes logits ``(B, C, *spatial)`` (images ``(B, C, H, W)`` or volumes ``(B, C, D, H, W)``) and
integer targets ``(B, *spatial)`` and respects ``ignore_index``:
ignored pixels add nothing to any sum and are not counted in any mean. With one channel (``C == 1``)
a loss is binary: the channel is the logit of the foreground (target 1) under a sigmoid; with
``C > 1`` the classes compete under a softmax.

========================  =====================================================================
``cross_entropy``         weighted CE; class weights from ``pixelseg stats`` (median frequency, ENet)
``bce``                   binary CE (one-vs-rest per class when ``C > 1``)
``focal``                 Lin et al. (2017), softmax or sigmoid, ``gamma`` and ``alpha``
``dice``                  soft Dice (standard or V-Net form), optionally generalized (Sudre et al.)
``vnet_dice``             V-Net's Dice (Milletari et al., 2016) as in the paper: per volume, no smoothing
``jaccard``               soft IoU
``tversky``               Salehi et al. (2017)
``lovasz_softmax``        Berman et al. (2018), per image or per batch
``lovasz_hinge``          Berman et al. (2018), binary, per image or per batch
``boundary``              Kervadec et al. (2019), on signed distance maps of the ground truth
``region_boundary``       a region loss and the boundary loss under a schedule
========================  =====================================================================

See docs/losses.md for the formulas and the references each loss is tested against.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import Tensor, nn

from .errors import PixelsegError, closest

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        LOSSES[name] = cls
        return cls

    return wrap


# ---- shared pieces ----------------------------------------------------------------------------------
def _valid_mask(target: Tensor, ignore_index: int | None) -> Tensor:
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def probabilities_and_onehot(logits: Tensor, target: Tensor, ignore_index: int | None
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """``(p, g, valid)`` as ``(B, K, N)``, ``(B, K, N)``, ``(B, 1, N)`` float tensors.

    ``C > 1``: softmax probabilities and the one-hot target (``K = C``); ``C == 1``: the sigmoid of the
    single channel and ``target == 1`` (``K = 1``). Ignored pixels are zero in both ``p`` and ``g``.
    """
    batch, channels = logits.shape[:2]
    logits = logits.float().reshape(batch, channels, -1)
    target = target.reshape(batch, -1)
    valid = _valid_mask(target, ignore_index)
    if channels == 1:
        probs = logits.sigmoid()
        onehot = (target == 1).unsqueeze(1).float()
    else:
        probs = logits.softmax(1)
        safe = torch.where(valid, target, torch.zeros_like(target)).long()
        onehot = F.one_hot(safe, channels).permute(0, 2, 1).float()
    valid = valid.unsqueeze(1).float()
    return probs * valid, onehot * valid, valid


def _one_vs_rest(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Logits and 0/1 targets of the counted pixels, ``(N, K)``: one column per class (``K = C``) or,
    for one channel, the foreground column alone."""
    channels = logits.shape[1]
    logits = logits.float().movedim(1, -1).reshape(-1, channels)
    target = target.reshape(-1)
    valid = _valid_mask(target, ignore_index)
    logits, target = logits[valid], target[valid]
    if channels == 1:
        return logits, (target == 1).float().unsqueeze(1)
    return logits, F.one_hot(target.long(), channels).float()


# ---- cross-entropy family ----------------------------------------------------------------------------
@register_loss("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy with optional class weights; pixels equal to ``ignore_index`` do not count.

    ``normalization="weights"`` (default, torch's): ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`` over the counted
    pixels. ``normalization="pixels"`` (MMSegmentation's ``avg_non_ignore=True``):
    ``Σ_i w_{y_i} ℓ_i / N`` with ``N`` the number of counted pixels. Without weights both are the mean.
    Weights by median-frequency balancing or ENet's rule come from ``pixelseg stats``. With one channel
    ``s`` it is the binary CE of the foreground, computed as the two-class CE of logits ``(0, s)``
    (whose softmax is ``(1 − σ(s), σ(s))``), so weights and normalisation work the same way.

    ``pixel_weights`` ``(B, H, W)`` (U-Net's weight map, ``pixelseg.data.weight_map``) multiply each
    pixel's term; the loss is then ``Σ_i p_i w_{y_i} ℓ_i / N`` over the ``N`` counted pixels (U-Net's energy,
    eq. 1, per pixel).
    """

    accepts_pixel_weights = True

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int = 255,
                 normalization: Literal["weights", "pixels"] = "weights") -> None:
        super().__init__()
        if normalization not in ("weights", "pixels"):
            raise ValueError(f"normalization must be 'weights' or 'pixels', not {normalization!r}")
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight)
        self.ignore_index = ignore_index
        self.normalization = normalization

    def forward(self, logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        target = target.long()
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        if pixel_weights is not None:
            losses = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                     reduction="none")
            counted = (target != self.ignore_index).sum().clamp_min(1)
            return (losses * pixel_weights.to(losses.dtype)).sum() / counted
        if self.normalization == "weights":
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        losses = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                 reduction="none")
        counted = (target != self.ignore_index).sum().clamp_min(1)
        return losses.sum() / counted


@register_loss("bce")
class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy on logits: the foreground channel when ``C == 1``, else one-vs-rest for each
    class (the one-hot target); the mean over counted pixels (and classes)."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        scores, labels = _one_vs_rest(logits, target, self.ignore_index)
        if scores.numel() == 0:
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(scores, labels)


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al., ICCV 2017, arXiv:1708.02002): ``−α_t (1 − p_t)^γ log p_t``, the mean over
    the counted pixels.

    ``activation="softmax"`` (default for ``C > 1``): ``p_t`` is the softmax probability of the true
    class. ``activation="sigmoid"``: every class is its own binary problem (one-vs-rest), and the loss
    is the mean over pixels and classes; with ``C == 1`` this is the paper's binary form.
    ``alpha``: ``None`` (no weighting), a number (``α`` for the foreground classes ``1..C−1`` and
    ``1 − α`` for class 0 under softmax; ``α`` for positives and ``1 − α`` for negatives under sigmoid),
    or one weight per class (softmax).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None,
                 activation: Literal["softmax", "sigmoid"] = "softmax", ignore_index: int = 255) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', not {activation!r}")
        if activation == "sigmoid" and alpha is not None and not isinstance(alpha, (int, float)):
            raise ValueError("a per-class alpha needs activation='softmax'")
        self.gamma, self.alpha, self.activation = gamma, alpha, activation
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.activation == "sigmoid" or logits.shape[1] == 1:
            return self._sigmoid(logits, target)
        channels = logits.shape[1]
        log_probs = logits.float().log_softmax(1).movedim(1, -1).reshape(-1, channels)
        target = target.reshape(-1)
        valid = _valid_mask(target, self.ignore_index)
        log_probs, target = log_probs[valid], target[valid].long()
        if target.numel() == 0:
            return logits.sum() * 0.0
        log_pt = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -(1 - log_pt.exp()).pow(self.gamma) * log_pt
        if self.alpha is not None:
            if isinstance(self.alpha, (int, float)):
                alpha = torch.full((channels,), float(self.alpha), device=loss.device)
                alpha[0] = 1 - float(self.alpha)
            else:
                alpha = torch.as_tensor(self.alpha, dtype=loss.dtype, device=loss.device)
            loss = alpha[target] * loss
        return loss.mean()

    def _sigmoid(self, logits: Tensor, target: Tensor) -> Tensor:
        scores, labels = _one_vs_rest(logits, target, self.ignore_index)
        if scores.numel() == 0:
            return logits.sum() * 0.0
        log_loss = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
        p = scores.sigmoid()
        p_t = p * labels + (1 - p) * (1 - labels)
        loss = (1 - p_t).pow(self.gamma) * log_loss
        if self.alpha is not None:
            loss = (self.alpha * labels + (1 - self.alpha) * (1 - labels)) * loss
        return loss.mean()


# ---- region (overlap) losses -------------------------------------------------------------------------
class _OverlapLoss(nn.Module):
    """Soft overlap losses from ``TP = Σ p g``, ``FP = Σ p (1 − g)``, ``FN = Σ (1 − p) g`` per class.

    The sums run over the whole batch (``per_image=False``) or over each image (``per_image=True``,
    then the mean over images). The loss is the mean over classes of ``1 − score``; with
    ``include_background=False`` class 0 is left out (multiclass only). ``smooth`` is added to numerator
    and denominator; ignored pixels are zeroed in ``p`` and ``g`` before any sum, so the smoothing never
    lets them in. Classes absent from the ground truth count (predicting them is penalised).
    """

    def __init__(self, smooth: float = 1.0, per_image: bool = False, include_background: bool = True,
                 eps: float = 1e-7, ignore_index: int | None = 255) -> None:
        super().__init__()
        self.smooth, self.per_image, self.include_background = smooth, per_image, include_background
        self.eps = eps
        self.ignore_index = ignore_index

    def score(self, probs: Tensor, onehot: Tensor, dims: tuple[int, ...]) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probs, onehot, _ = probabilities_and_onehot(logits, target, self.ignore_index)
        if not self.include_background and probs.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = (2,) if self.per_image else (0, 2)
        return (1 - self.score(probs, onehot, dims)).mean()

    def _ratio(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        return (numerator + self.smooth) / (denominator + self.smooth).clamp_min(self.eps)


@register_loss("dice")
class DiceLoss(_OverlapLoss):
    """Soft Dice loss ``1 − mean_c (2 TP_c + s) / (D_c + s)``.

    ``form="standard"``: ``D = Σ p + Σ g``; ``form="vnet"`` (Milletari et al., 2016): ``D = Σ p² + Σ g²``.
    ``generalized=True`` (Sudre et al., 2017, arXiv:1707.03237): one score
    ``(2 Σ_c w_c TP_c + s) / (Σ_c w_c D_c + s)`` with ``w_c = 1 / (Σ g_c)²``; a class absent from the
    ground truth gets the largest weight of the present classes (as MONAI does).
    """

    def __init__(self, smooth: float = 1.0, form: Literal["standard", "vnet"] = "standard",
                 generalized: bool = False, per_image: bool = False, include_background: bool = True,
                 eps: float = 1e-7, ignore_index: int | None = 255) -> None:
        super().__init__(smooth, per_image, include_background, eps, ignore_index)
        if form not in ("standard", "vnet"):
            raise ValueError(f"form must be 'standard' or 'vnet', not {form!r}")
        self.form, self.generalized = form, generalized

    def score(self, probs: Tensor, onehot: Tensor, dims: tuple[int, ...]) -> Tensor:
        intersection = (probs * onehot).sum(dims)
        if self.form == "vnet":
            denominator = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
        else:
            denominator = probs.sum(dims) + onehot.sum(dims)
        if not self.generalized:
            return self._ratio(2 * intersection, denominator)
        weights = 1.0 / onehot.sum(dims).square()  # (C,) or (B, C)
        infinite = torch.isinf(weights)
        weights = torch.where(infinite, torch.zeros_like(weights), weights)
        weights = torch.where(infinite, weights.amax(-1, keepdim=True), weights)
        return self._ratio(2 * (weights * intersection).sum(-1), (weights * denominator).sum(-1))


@register_loss("vnet_dice")
class VNetDiceLoss(DiceLoss):
    """V-Net's Dice loss as in the paper: ``1 − 2 Σ p g / max(Σ p² + Σ g², eps)`` with no smoothing.

    ``DiceLoss(form="vnet", smooth=0)`` with the paper's defaults: the sums run over the voxels of each
    volume (``batch=True``: over the whole batch), then the mean over classes (from class 1 if not
    ``include_background``) and volumes. Voxels labelled ``ignore_index`` count in neither sum. Works for
    logits ``(B, C, *spatial)`` with any number of spatial dimensions.
    """

    def __init__(self, include_background: bool = True, ignore_index: int | None = 255, batch: bool = False,
                 eps: float = 1e-6) -> None:
        super().__init__(smooth=0.0, form="vnet", per_image=not batch, include_background=include_background,
                         eps=eps, ignore_index=ignore_index)
        self.batch = batch


def vnet_dice_loss(logits: Tensor, target: Tensor, *, include_background: bool = True,
                   ignore_index: int | None = None, batch: bool = False, eps: float = 1e-6) -> Tensor:
    """:class:`VNetDiceLoss` as a function (by default with no ignored label)."""
    return VNetDiceLoss(include_background, ignore_index, batch, eps)(logits, target)


@register_loss("jaccard")
class JaccardLoss(_OverlapLoss):
    """Soft IoU (Jaccard) loss ``1 − mean_c (TP_c + s) / (Σ p_c + Σ g_c − TP_c + s)``."""

    def score(self, probs: Tensor, onehot: Tensor, dims: tuple[int, ...]) -> Tensor:
        intersection = (probs * onehot).sum(dims)
        return self._ratio(intersection, probs.sum(dims) + onehot.sum(dims) - intersection)


@register_loss("tversky")
class TverskyLoss(_OverlapLoss):
    """Tversky loss (Salehi et al., 2017, arXiv:1706.05721): ``1 − mean_c (TP + s) / (TP + α FP + β FN + s)``.

    ``α`` weighs false positives, ``β`` false negatives; ``α = β = 0.5`` is Dice, ``α = β = 1`` Jaccard.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0, per_image: bool = False,
                 include_background: bool = True, eps: float = 1e-7, ignore_index: int = 255) -> None:
        super().__init__(smooth, per_image, include_background, eps, ignore_index)
        self.alpha, self.beta = alpha, beta

    def score(self, probs: Tensor, onehot: Tensor, dims: tuple[int, ...]) -> Tensor:
        tp = (probs * onehot).sum(dims)
        fp = probs.sum(dims) - tp
        fn = onehot.sum(dims) - tp
        return self._ratio(tp, tp + self.alpha * fp + self.beta * fn)


# ---- Lovász ------------------------------------------------------------------------------------------
def lovasz_grad(sorted_truth: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order
    (Berman et al., 2018, Alg. 1), for each row of ``sorted_truth`` (``(..., P)``, 0/1 floats)."""
    total = sorted_truth.sum(-1, keepdim=True)
    intersection = total - sorted_truth.cumsum(-1)
    union = total + (1 - sorted_truth).cumsum(-1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _lovasz_extension(errors: Tensor, truth: Tensor) -> Tensor:
    """``Σ_i e_(i) · grad_i`` for each row, errors sorted in decreasing order. Errors of ignored pixels
    must be 0 (with truth 0): they then sort after every positive error and add nothing."""
    errors_sorted, order = errors.sort(-1, descending=True)
    return (errors_sorted * lovasz_grad(truth.gather(-1, order))).sum(-1)


@register_loss("lovasz_softmax")
class LovaszSoftmaxLoss(nn.Module):
    """Lovász-Softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018, arXiv:1705.08790).

    For each class, the Lovász extension of its Jaccard loss evaluated at the errors ``|g_c − p_c|``;
    the mean over the classes present in the ground truth (``classes="present"``) or all classes
    (``"all"``). ``per_image=True``: computed for each image, then averaged over images (an image with
    nothing to average contributes 0, as in the authors' code); otherwise over the batch as one image.
    With one channel the sigmoid probability is the foreground's.
    """

    def __init__(self, per_image: bool = False, classes: Literal["present", "all"] = "present",
                 ignore_index: int = 255) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', not {classes!r}")
        self.per_image, self.classes, self.ignore_index = per_image, classes, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probs, onehot, valid = probabilities_and_onehot(logits, target, self.ignore_index)
        if not self.per_image:  # the batch as one image: (1, K, B·N)
            probs, onehot, valid = (x.transpose(0, 1).reshape(1, x.shape[1], -1) for x in (probs, onehot, valid))
        errors = (onehot - probs).abs()  # ignored pixels: 0 - 0
        losses = _lovasz_extension(errors, onehot)  # (B, K)
        if self.classes == "present":
            counted = (onehot.sum(-1) > 0).float()
        else:
            counted = (valid.sum(-1) > 0).float().expand_as(losses)
        per_image = (losses * counted).sum(-1) / counted.sum(-1).clamp_min(1)
        return per_image.mean()


@register_loss("lovasz_hinge")
class LovaszHingeLoss(nn.Module):
    """Binary Lovász hinge (Berman et al., 2018): the Lovász extension of the Jaccard loss of the
    foreground at the hinge errors ``max(0, 1 − s·y)`` (``y = ±1``, ``s`` the foreground logit).

    Needs one channel; ``per_image`` as for Lovász-Softmax.
    """

    def __init__(self, per_image: bool = True, ignore_index: int = 255) -> None:
        super().__init__()
        self.per_image, self.ignore_index = per_image, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"lovasz_hinge is binary: logits need one channel, not {logits.shape[1]}")
        batch = logits.shape[0]
        scores = logits.float().reshape(batch, -1)
        target = target.reshape(batch, -1)
        valid = _valid_mask(target, self.ignore_index).float()
        truth = (target == 1).float() * valid
        errors = F.relu(1 - scores * (2 * truth - 1)) * valid
        if not self.per_image:
            errors, truth = errors.reshape(1, -1), truth.reshape(1, -1)
        return _lovasz_extension(errors, truth).mean()


# ---- boundary loss -----------------------------------------------------------------------------------
def signed_distance_map(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance of every pixel to the boundary of a binary ``mask`` (Kervadec et al.):
    outside, the distance to the nearest mask pixel; inside, ``−(d − 1)`` with ``d`` the distance to the
    nearest pixel outside (so the mask's own border pixels are 0). All zeros when the mask is empty.
    Exact distances from scipy's ``distance_transform_edt``."""
    mask = mask.astype(bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    outside = ~mask
    inside_distance = distance_transform_edt(mask) if outside.any() else np.ones(mask.shape)
    distance = distance_transform_edt(outside) * outside - (inside_distance - 1) * mask
    return distance.astype(np.float32)


def signed_distance_maps(target: Tensor, num_classes: int) -> Tensor:
    """``(B, C, H, W)`` signed distance maps of each class of integer targets ``(B, H, W)``; ignored
    pixels (any label outside the classes) belong to no class. ``num_classes == 1``: the map of the foreground (target 1)."""
    labels = target.detach().cpu().numpy()
    classes = [1] if num_classes == 1 else range(num_classes)
    maps = np.stack([np.stack([signed_distance_map(image == c) for c in classes]) for image in labels])
    return torch.from_numpy(maps).to(target.device)


@register_loss("boundary")
class BoundaryLoss(nn.Module):
    """Boundary loss (Kervadec et al., MIDL 2019, arXiv:1812.07032): ``mean_{i,c} p_c(i) · φ_c(i)`` with
    ``φ_c`` the signed distance map of class ``c``'s ground truth (negative inside), over the counted
    pixels and the chosen classes: ``classes=None`` means every class but the background (class 0), or the
    foreground when there is one channel. Alone it can go negative and collapse; pair it with a region
    loss (``region_boundary``)."""

    def __init__(self, classes: Sequence[int] | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.classes = None if classes is None else list(classes)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        channels = logits.shape[1]
        probs = logits.float().sigmoid() if channels == 1 else logits.float().softmax(1)
        distances = signed_distance_maps(target, channels)
        valid = _valid_mask(target, self.ignore_index).unsqueeze(1).float()
        classes = self.classes if self.classes is not None else ([0] if channels == 1 else range(1, channels))
        index = torch.as_tensor(list(classes), device=logits.device, dtype=torch.long)
        product = (probs * distances * valid).index_select(1, index)
        return product.sum() / (valid.sum() * len(index)).clamp_min(1)


@register_loss("region_boundary")
class RegionBoundaryLoss(nn.Module):
    """``α · region + (1 − α) · boundary`` with ``α`` on a schedule (Kervadec et al., Sec. 3: start from
    the region loss alone and move weight to the boundary loss as training goes on).

    ``α(epoch) = max(alpha_min, alpha_start − alpha_step · epoch)``; the paper's "rebalance" schedule is
    ``alpha_start=1, alpha_step=0.01, alpha_min=0.01``; ``alpha_step=0`` keeps ``α`` constant.
    ``region`` is a loss term like those of ``loss:`` in a config (default generalized Dice, as in the
    paper). The epoch comes from ``set_epoch`` or, when ``steps_per_epoch`` is given, from counting the
    training steps this loss has seen (calls with the same target, such as auxiliary heads, are one step).
    """

    def __init__(self, region: dict[str, Any] | None = None, alpha_start: float = 1.0,
                 alpha_step: float = 0.01, alpha_min: float = 0.01, steps_per_epoch: int | None = None,
                 boundary_classes: Sequence[int] | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        term = dict(region or {"name": "dice", "generalized": True})
        self.region = _build_term(term, ignore_index)[0]
        self.boundary = BoundaryLoss(boundary_classes, ignore_index)
        self.alpha_start, self.alpha_step, self.alpha_min = alpha_start, alpha_step, alpha_min
        self.steps_per_epoch = steps_per_epoch
        self.epoch, self.steps = 0, 0
        self._last_target: Callable[[], Tensor | None] = lambda: None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.steps = epoch * (self.steps_per_epoch or 0)

    @property
    def alpha(self) -> float:
        return max(self.alpha_min, self.alpha_start - self.alpha_step * self.epoch)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.steps_per_epoch and self.training and torch.is_grad_enabled() and self._last_target() is not target:
            self._last_target = weakref.ref(target)
            self.epoch = self.steps // self.steps_per_epoch
            self.steps += 1
        alpha = self.alpha
        return alpha * self.region(logits, target) + (1 - alpha) * self.boundary(logits, target)


# ---- sums and building from config -------------------------------------------------------------------
class WeightedSum(nn.Module):
    """``Σ_k w_k · loss_k`` — e.g. BCE + Dice as UNet++ trains."""

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights)

    @property
    def accepts_pixel_weights(self) -> bool:
        return all(getattr(loss, "accepts_pixel_weights", False) for loss in self.losses)

    def forward(self, logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        if pixel_weights is None:
            return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses, strict=True))
        return sum(w * loss(logits, target, pixel_weights) for w, loss in zip(self.weights, self.losses, strict=True))


def _build_term(term: dict[str, Any], ignore_index: int) -> tuple[nn.Module, float]:
    params = dict(term)
    if "name" not in params:
        raise PixelsegError(f"a loss term needs a name (one of {', '.join(sorted(LOSSES))})")
    name = params.pop("name")
    weight = float(params.pop("weight", 1.0))
    if not math.isfinite(weight):
        raise PixelsegError(f"loss '{name}': weight must be a finite number, not {weight}")
    if name not in LOSSES:
        raise PixelsegError(f"unknown loss '{name}'{closest(name, LOSSES)}")
    params.setdefault("ignore_index", ignore_index)
    try:
        return LOSSES[name](**params), weight
    except (TypeError, ValueError) as err:
        raise PixelsegError(f"loss '{name}': {err}") from None


def build_loss(terms: Sequence[dict[str, Any]], ignore_index: int = 255) -> nn.Module:
    """Build a loss from ``[{"name": ..., "weight": ..., **params}, ...]``; one term is returned as is."""
    built = [_build_term(term, ignore_index) for term in terms]
    if not built:
        raise PixelsegError("the loss needs at least one term")
    if len(built) == 1 and built[0][1] == 1.0:
        return built[0][0]
    return WeightedSum([module for module, _ in built], [weight for _, weight in built])
