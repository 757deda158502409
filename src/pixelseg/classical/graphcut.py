"""Binary segmentation by s–t minimum cut: Boykov–Jolly interactive graph cuts, and GrabCut.

Boykov & Jolly, "Interactive Graph Cuts for Optimal Boundary & Region Segmentation of Objects in N-D
Images", ICCV 2001. The one idea: the energy lambda * sum_p R_p(x_p) + sum_{pq} B_pq [x_p != x_q], with
regional terms R from the colour models of the seeds and a contrast-sensitive boundary term
B_pq = exp(-|I_p - I_q|^2 / 2 sigma^2) / dist(p, q), is minimised *globally* by one minimum cut, and
the user's seeds enter as hard constraints (infinite terminal links).

Rother, Kolmogorov & Blake, "GrabCut: Interactive Foreground Extraction using Iterated Graph Cuts",
SIGGRAPH 2004: from a box, alternate fitting foreground/background colour GMMs and a graph cut
(:func:`grabcut`, through OpenCV's implementation, seeded so that the same input gives the same mask).

Boxes are ``(x0, y0, x1, y1)`` in pixels with the far corner *exclusive*, as in slicing
``image[y0:y1, x0:x1]``: the box covers columns x0..x1-1 and rows y0..y1-1, and ``(0, 0, W, H)`` is the
whole image. Both methods start from a box the same way: outside it is certain background, inside it
probable foreground.
"""

from __future__ import annotations

import numpy as np

from ..errors import PixelsegError
from .grid_energy import binary_min_cut, grid_energy

UNKNOWN, FOREGROUND, BACKGROUND = 0, 1, 2
HARD = 1e9


def colour_histogram_costs(image: np.ndarray, mask: np.ndarray, bins: int = 8) -> np.ndarray:
    """-log Pr(colour | region) for every pixel, from a smoothed colour histogram of the masked pixels."""
    pixels = image.reshape(-1, image.shape[-1]) if image.ndim == 3 else image.reshape(-1, 1)
    quantised = np.minimum(pixels.astype(np.int64) * bins // 256, bins - 1)
    codes = np.ravel_multi_index(tuple(quantised.T), (bins,) * quantised.shape[1])
    counts = np.bincount(codes[mask.reshape(-1)], minlength=bins ** quantised.shape[1]) + 1.0
    return -np.log(counts / counts.sum())[codes].reshape(mask.shape)


def _check_same_size(image: np.ndarray, array: np.ndarray, what: str) -> None:
    if array.shape[:2] != image.shape[:2]:
        raise PixelsegError(f"{what} is {array.shape[1]}x{array.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}")


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels (H, W) bool inside a box ``(x0, y0, x1, y1)``, far corner exclusive: columns
    x0..x1-1, rows y0..y1-1."""
    height, width = shape
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise PixelsegError(f"box {tuple(box)} is not inside the {width}x{height} image (x0,y0,x1,y1 with "
                            f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height})")
    inside = np.zeros(shape, dtype=bool)
    inside[y0:y1, x0:x1] = True
    return inside


def _check_iterations(iterations: int) -> None:
    if iterations < 1:
        raise PixelsegError(f"iterations must be at least 1, got {iterations}")


def boykov_jolly(image: np.ndarray, seeds: np.ndarray | None = None,
                 foreground_probability: np.ndarray | None = None, smoothness: float = 1.0,
                 region_weight: float = 1.0, connectivity: int = 8, box: tuple[int, int, int, int] | None = None,
                 iterations: int = 1) -> np.ndarray:
    """Foreground mask (H, W) bool from seeds (0 unknown, 1 foreground, 2 background), a box and/or a
    foreground probability map; contrast-sensitive Potts boundary terms; one global min cut.

    A box makes everything outside it background seeds and, without foreground seeds, takes the colours
    inside it as the foreground model (GrabCut's start). With colour models (no probability map),
    ``iterations`` > 1 refits both histograms to the last cut and cuts again, as GrabCut does.
    """
    if seeds is None and foreground_probability is None and box is None:
        raise PixelsegError("graph cut needs seeds (scribbles), a box or foreground probabilities")
    _check_iterations(iterations)
    height, width = image.shape[:2]
    prior_background = np.zeros((height, width))
    prior_foreground = np.zeros((height, width))
    if foreground_probability is not None:
        _check_same_size(image, foreground_probability, "the probability map")
        probability = np.clip(foreground_probability.astype(np.float64), 1e-6, 1 - 1e-6)
        prior_foreground += -np.log(probability)
        prior_background += -np.log(1 - probability)
    if seeds is not None:
        _check_same_size(image, seeds, "the scribble map")
    if box is not None:
        outside = ~box_mask((height, width), box)
        given = seeds if seeds is not None else np.zeros((height, width), dtype=np.uint8)
        seeds = np.where(given != UNKNOWN, given, np.where(outside, BACKGROUND, UNKNOWN))
    colour_models = seeds is not None and foreground_probability is None
    if seeds is not None:
        foreground_sample = seeds == FOREGROUND
        if box is not None and not foreground_sample.any():
            foreground_sample = seeds == UNKNOWN  # the inside of the box
        background_sample = seeds == BACKGROUND
        if not foreground_sample.any() or not background_sample.any():
            raise PixelsegError("the scribbles need both foreground (1) and background (2) pixels"
                                + (" (a box over the whole image leaves no background)" if box else ""))
    energy = grid_energy(np.zeros((height, width, 2)), smoothness=smoothness, connectivity=connectivity,
                         image=image)
    zeros = np.zeros_like(energy.weight)
    for _ in range(iterations if colour_models else 1):
        cost_background, cost_foreground = prior_background.copy(), prior_foreground.copy()
        if colour_models:
            cost_foreground += colour_histogram_costs(image, foreground_sample)
            cost_background += colour_histogram_costs(image, background_sample)
        if seeds is not None:
            cost_foreground[seeds == BACKGROUND] = HARD
            cost_background[seeds == FOREGROUND] = HARD
        unary = region_weight * np.stack([cost_background, cost_foreground], axis=2)
        foreground = binary_min_cut(unary[..., 0].reshape(-1), unary[..., 1].reshape(-1), energy.first,
                                    energy.second, zeros, energy.weight, energy.weight, zeros
                                    ).reshape(height, width)
        if colour_models:
            foreground_sample, background_sample = foreground, ~foreground
    return foreground


def grabcut(image: np.ndarray, box: tuple[int, int, int, int] | None = None, seeds: np.ndarray | None = None,
            iterations: int = 5, seed: int = 0) -> np.ndarray:
    """GrabCut (OpenCV): foreground mask from a box ``(x0, y0, x1, y1)``, far corner exclusive, and/or
    seeds as above, after ``iterations`` rounds of GMM fitting and graph cut.

    OpenCV initialises the colour GMMs by k-means with its global random generator; it is seeded with
    ``seed`` on every call, so the result does not depend on what ran before in the process.
    """
    import cv2

    if box is None and seeds is None:
        raise PixelsegError("GrabCut needs a box or seeds")
    _check_iterations(iterations)
    height, width = image.shape[:2]
    if box is not None:
        mask = np.where(box_mask((height, width), box), cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    else:
        mask = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)
    if seeds is not None:
        _check_same_size(image, seeds, "the scribble map")
        mask[seeds == FOREGROUND] = cv2.GC_FGD
        mask[seeds == BACKGROUND] = cv2.GC_BGD
    colour = np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, 2))
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    cv2.grabCut(colour.astype(np.uint8), mask, None, background_model, foreground_model, iterations,
                cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
