"""Fully connected CRF with Gaussian edge potentials, mean-field inference in PyTorch.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
NeurIPS 2011 (arXiv:1210.5644). The one idea: when every pair of pixels is connected by a pairwise
term that is a weighted sum of Gaussian kernels in feature space, one mean-field update is a
Gaussian *filter* of the current marginals, so inference over all N^2 edges costs O(N) with the
permutohedral lattice.

Energy: E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) sum_m w_m k_m(f_i, f_j), with the appearance
kernel exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2) and the smoothness kernel
exp(-|p_i - p_j|^2 / 2 theta_gamma^2). Each kernel is normalised symmetrically (D^-1/2 K D^-1/2, as in
the authors' code), and mu is the Potts model unless a label compatibility matrix is given.

The defaults are the values used in the authors' and in DeepLab's examples (smoothness: 3 px,
weight 3; appearance: 80 px, 13 intensity levels, weight 10; 5 iterations).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import PixelsegError
from .permutohedral import PermutohedralLattice


def spatial_features(height: int, width: int, sxy: float, device: torch.device | str = "cpu") -> Tensor:
    """(H*W, 2) pixel positions ``(x / sxy, y / sxy)`` in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.reshape(-1) / sxy, ys.reshape(-1) / sxy], dim=1)


def bilateral_features(image: Tensor | np.ndarray, sxy: float, srgb: float) -> Tensor:
    """(H*W, 5) features ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)`` of an (H, W, 3) image."""
    pixels = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    if pixels.dim() != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {tuple(pixels.shape)}")
    height, width = pixels.shape[:2]
    colours = pixels.reshape(-1, 3).to(torch.float32) / srgb
    return torch.cat([spatial_features(height, width, sxy, pixels.device), colours], dim=1)


class GaussianKernel:
    """One symmetrically normalised Gaussian kernel ``D^-1/2 K D^-1/2`` over fixed features.

    The normalisation is folded into the lattice's splatting and slicing weights.
    """

    def __init__(self, features: Tensor) -> None:
        self.lattice = PermutohedralLattice(features)
        with torch.no_grad():
            ones = torch.ones(features.shape[0], 1, device=features.device)
            self.lattice.rescale(torch.rsqrt(self.lattice.filter(ones) + 1e-20).squeeze(1))

    def __call__(self, values: Tensor) -> Tensor:
        return self.lattice.filter(values)


@functools.lru_cache(maxsize=4)
def spatial_kernel(height: int, width: int, sxy: float, device: str = "cpu") -> GaussianKernel:
    """The smoothness kernel depends only on the image size: built once per size and reused."""
    return GaussianKernel(spatial_features(height, width, sxy, device))


def mean_field(unary: Tensor, kernels: list[GaussianKernel], weights: list[float] | Tensor,
               iterations: int = 5, compatibility: Tensor | None = None) -> Tensor:
    """Mean-field marginals Q (N, C) for unary energies (N, C).

    ``compatibility`` (C, C) is the label compatibility mu; ``None`` means Potts, mu = [l != l'].
    Each step: Q <- softmax(-U - mu . sum_m w_m k_m * Q), where ``*`` is the Gaussian filter.
    """
    fixed = not isinstance(weights, Tensor)
    if (fixed and compatibility is None and all(weight >= 0 for weight in weights)
            and not (torch.is_grad_enabled() and unary.requires_grad)):
        return _potts_mean_field(unary, kernels, [float(weight) for weight in weights], iterations)
    unary = unary.contiguous()
    q = torch.softmax(-unary, dim=1)
    for _ in range(iterations):
        message = sum(weight * kernel(q) for weight, kernel in zip(weights, kernels, strict=True))
        if compatibility is None:  # Potts: the sum over l' != l differs from -message by a constant
            logits = -unary + message
        else:
            logits = -unary - message @ compatibility.T
        q = torch.softmax(logits, dim=1)
    return q


def _potts_mean_field(unary: Tensor, kernels: list[GaussianKernel], weights: list[float],
                      iterations: int) -> Tensor:
    """The Potts mean field for fixed non-negative weights, without gradients, in place.

    The softmax needs no maximum per point. With U' = U - min_l U (0 at each point's best label) the
    logits are message - U'; the message m is non-negative (so the best label's exp(m) >= 1) and at most
    its sum over the labels, b = sum_m w_m k_m * 1 (the marginals sum to 1), the same at every step. If
    max b is too large for float32's exp, the steps use the ordinary softmax.
    """
    with torch.no_grad():
        shifted = torch.sub(unary, unary.amin(1, keepdim=True), out=unary.new_empty(unary.shape))
        row_sum = unary.new_empty(unary.shape[0], 1)
        ones = unary.new_ones(unary.shape[1], 1)
        q = torch.neg(shifted).exp_()
        q.mul_(torch.mm(q, ones, out=row_sum).reciprocal_())
        message = torch.empty_like(q)
        workspace: dict[str, Tensor] = {}
        shift_free = None
        for _ in range(iterations):
            for index, (weight, kernel) in enumerate(zip(weights, kernels, strict=True)):
                kernel.lattice.filter_into(q, message, weight, accumulate=index > 0, workspace=workspace)
            if shift_free is None:
                shift_free = float(torch.mm(message, ones, out=row_sum).max()) <= 60.0
            if shift_free:
                q, message = message.sub_(shifted).exp_(), q
                q.mul_(torch.mm(q, ones, out=row_sum).reciprocal_())
            else:
                q = torch.softmax(message.sub_(shifted), dim=1)
    return q


@dataclass
class DenseCRFConfig:
    """Parameters of the dense CRF (names as in Krähenbühl & Koltun's code)."""

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 5

    def __post_init__(self) -> None:
        """Refuse values the inference cannot use, in one line naming the parameter."""
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb", "gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            positive = name.endswith(("sxy", "srgb"))
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                    value <= 0 if positive else value < 0):
                kind = "a bandwidth, must be > 0" if positive else "a kernel weight, must be >= 0"
                raise PixelsegError(f"dense CRF {name} ({kind}) is {value!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise PixelsegError(f"dense CRF iterations must be a whole number >= 1, got {self.iterations!r}")

    @classmethod
    def with_overrides(cls, **overrides: float | None) -> DenseCRFConfig | None:
        """The defaults with the given non-None parameters changed; ``None`` when nothing is given."""
        given = {name: value for name, value in overrides.items() if value is not None}
        return cls(**given) if given else None  # type: ignore[arg-type]


def dense_crf(unary: Tensor, image: Tensor | np.ndarray, config: DenseCRFConfig | None = None) -> Tensor:
    """Refine one image: ``unary`` (C, H, W) energies (e.g. ``-log p``), ``image`` (H, W, 3) uint8.

    Returns the mean-field marginals (C, H, W). Runs on ``unary.device``; differentiable in ``unary``.
    """
    config = config or DenseCRFConfig()
    if unary.dim() != 3:
        raise ValueError(f"unary must be (C, H, W), got shape {tuple(unary.shape)}")
    classes, height, width = unary.shape
    pixels = image if isinstance(image, Tensor) else torch.from_numpy(np.array(image, dtype=np.uint8))
    if tuple(pixels.shape[:2]) != (height, width):
        raise ValueError(f"image is {tuple(pixels.shape[:2])} but the unaries are {(height, width)}")
    device = unary.device
    kernels = [spatial_kernel(height, width, config.gaussian_sxy, str(device)),
               GaussianKernel(bilateral_features(pixels.to(device), config.bilateral_sxy,
                                                 config.bilateral_srgb))]
    weights = [config.gaussian_compat, config.bilateral_compat]
    flat = unary.reshape(classes, -1).T  # (N, C), a view: the mean field makes its own (N, C) buffers
    q = mean_field(flat, kernels, weights, config.iterations)
    return q.T.reshape(classes, height, width)


def unary_from_probabilities(probabilities: Tensor, clip: float = 1e-5) -> Tensor:
    """Unary energies ``-log(max(p, clip))``, as ``pydensecrf.utils.unary_from_softmax``."""
    return -torch.log(probabilities.clamp(min=clip))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseCRFRefiner:
    """A batched ``(image, logits) -> log-marginals`` post-processing step (DeepLab v1/v2's CRF).

    The network sees normalised images; the appearance kernel needs the RGB values, so the image is
    un-normalised with ``mean``/``std`` (by default the ImageNet statistics of pixelseg's pipelines) back
    to 0-255. The unaries are ``-log softmax(logits)``; the result is ``log`` of the CRF marginals, so it
    can stand wherever logits are expected (argmax, softmax, the metrics).
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 config: DenseCRFConfig | None = None) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.config = config or DenseCRFConfig()

    def __call__(self, image: Tensor, logits: Tensor) -> Tensor:
        """``image`` (B, 3, H, W) normalised, ``logits`` (B, K, H, W) -> log-marginals (B, K, H, W)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"the dense CRF needs (B, 3, H, W) RGB images, got shape {tuple(image.shape)}")
        mean = torch.tensor(self.mean, device=image.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=image.device).view(3, 1, 1)
        refined = []
        for picture, scores in zip(image, logits, strict=True):
            rgb = ((picture * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            unary = unary_from_probabilities(torch.softmax(scores.float(), dim=0))
            marginals = dense_crf(unary, rgb, self.config)
            refined.append(torch.log(marginals.clamp(min=1e-8)).to(logits.dtype))
        return torch.stack(refined)


def refine_logits(logits: Tensor, image: Tensor | np.ndarray, config: DenseCRFConfig | None = None) -> Tensor:
    """Dense-CRF post-processing of one network output: logits (K, H, W) -> labels (H, W).

    The call behind ``--refine crf``: unaries are ``-log softmax(logits)`` (clipped as pydensecrf's
    ``unary_from_softmax``), ``image`` is the (H, W, 3) uint8 input image.
    """
    unary = unary_from_probabilities(logits.detach().float().softmax(0))
    return dense_crf(unary, image, config).argmax(0)
