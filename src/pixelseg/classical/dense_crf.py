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
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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
    """One symmetrically normalised Gaussian kernel ``D^-1/2 K D^-1/2`` over fixed features."""

    def __init__(self, features: Tensor) -> None:
        self.lattice = PermutohedralLattice(features)
        with torch.no_grad():
            ones = torch.ones(features.shape[0], 1, device=features.device)
            self.norm = torch.rsqrt(self.lattice.filter(ones) + 1e-20)

    def __call__(self, values: Tensor) -> Tensor:
        norm = self.norm.to(values.dtype)
        return norm * self.lattice.filter(norm * values)


class WeightedKernelSum:
    """``sum_m w_m k_m(values)`` for fixed scalar weights in one splat, one blur and one slice.

    The lattices of all kernels are stacked into one (each keeps its own empty vertex, and a lattice
    with fewer axes sees empty neighbours on the extra axes, which leaves it unchanged), and the
    normalisations, the constant ``alpha`` and the weights are folded into the sparse matrices.
    """

    def __init__(self, kernels: list[GaussianKernel], weights: list[float], dtype: torch.dtype,
                 device: torch.device) -> None:
        axes = max(kernel.lattice.dim + 1 for kernel in kernels)
        splat_rows, splat_cols, splat_values, slice_cols, slice_values, neighbours = [], [], [], [], [], []
        row_offset, entry_offset = 0, 0
        for kernel, weight in zip(kernels, weights, strict=True):
            lattice = kernel.lattice
            splat, _ = lattice._sparse_operators(dtype, device)
            norm = kernel.norm.to(device, dtype).reshape(-1)
            columns = splat.col_indices()
            splat_rows.append(splat.crow_indices()[:-1] + entry_offset)
            splat_cols.append(columns)
            splat_values.append(splat.values() * norm[columns])
            slice_cols.append(lattice.offsets.to(device) + row_offset)
            slice_values.append(lattice.weights.to(device, dtype) * (weight * lattice.alpha * norm)[:, None])
            own = lattice.neighbours.to(device) + row_offset
            empty = torch.full((axes - own.shape[0], 2, own.shape[2]), row_offset, device=device)
            neighbours.append(torch.cat([own, empty]))
            row_offset += lattice.num_vertices + 1
            entry_offset += columns.numel()
        splat_rows.append(torch.tensor([entry_offset], device=device))
        points = kernels[0].lattice.num_points
        per_point = sum(cols.shape[1] for cols in slice_cols)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.splat = torch.sparse_csr_tensor(torch.cat(splat_rows), torch.cat(splat_cols),
                                                 torch.cat(splat_values), (row_offset, points))
            self.slice = torch.sparse_csr_tensor(
                torch.arange(0, points * per_point + 1, per_point, device=device),
                torch.cat(slice_cols, dim=1).reshape(-1), torch.cat(slice_values, dim=1).reshape(-1),
                (points, row_offset))
        self.neighbours = torch.cat(neighbours, dim=2)                  # (axes, 2, total vertices)

    def __call__(self, values: Tensor) -> Tensor:
        lattice = self.splat @ values
        for axis in range(self.neighbours.shape[0]):
            lattice = lattice + 0.5 * (lattice.index_select(0, self.neighbours[axis, 0])
                                       + lattice.index_select(0, self.neighbours[axis, 1]))
        return self.slice @ lattice


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
    q = torch.softmax(-unary, dim=1)
    fixed = not isinstance(weights, Tensor)
    combined = WeightedKernelSum(kernels, list(weights), unary.dtype, unary.device) if fixed else None
    for _ in range(iterations):
        if combined is not None:
            message = combined(q)
        else:
            message = sum(weight * kernel(q) for weight, kernel in zip(weights, kernels, strict=True))
        if compatibility is None:  # Potts: the sum over l' != l differs from -message by a constant
            logits = -unary + message
        else:
            logits = -unary - message @ compatibility.T
        q = torch.softmax(logits, dim=1)
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
    flat = unary.reshape(classes, -1).T.contiguous()
    q = mean_field(flat, kernels, weights, config.iterations)
    return q.T.reshape(classes, height, width)


def unary_from_probabilities(probabilities: Tensor, clip: float = 1e-5) -> Tensor:
    """Unary energies ``-log(max(p, clip))``, as ``pydensecrf.utils.unary_from_softmax``."""
    return -torch.log(probabilities.clamp(min=clip))


def refine_logits(logits: Tensor, image: Tensor | np.ndarray, config: DenseCRFConfig | None = None) -> Tensor:
    """Dense-CRF post-processing of one network output: logits (K, H, W) -> labels (H, W).

    The call behind ``--refine crf``: unaries are ``-log softmax(logits)`` (clipped as pydensecrf's
    ``unary_from_softmax``), ``image`` is the (H, W, 3) uint8 input image.
    """
    unary = unary_from_probabilities(logits.detach().float().softmax(0))
    return dense_crf(unary, image, config).argmax(0)
