"""Soft edges for background removal: a hard foreground mask refined into an alpha matte.

The mask's boundary is uncertain, so a trimap is made from it (:func:`trimap_from_mask`): the mask eroded
by ``band`` pixels is certain foreground, outside the mask dilated by ``band`` certain background, the
ring between them unknown. Only the unknown ring is refined; elsewhere alpha is the mask.

- ``guided``: the guided filter (He, Sun & Tang, "Guided Image Filtering", ECCV 2010) of the mask with the
  colour photo as guide: in every (2r+1)² window the output is an affine function of the guide's colour,
  ``q = a·I + b``, fitted by ridge regression (``eps``) to the mask, and the fits of the windows covering a
  pixel are averaged. Local, so it runs tile by tile (margin 2r) with bounded memory on any photo.
- ``matting``: closed-form matting (Levin, Lischinski & Weiss, CVPR 2006 / PAMI 2008): alpha minimises
  ``αᵀLα`` with the matting Laplacian ``L`` of 3×3 windows under the colour-line model, the trimap's known
  pixels fixed. A sparse system over the unknown ring only, solved by scipy (SuperLU); photos whose longer
  side exceeds ``max_side`` are solved on a downscaled copy and the alpha upsampled into the ring.
- ``crf``: the dense CRF of :mod:`pixelseg.refiners.dense_crf` with the known pixels confident and the
  ring undecided; alpha is the foreground marginal (on a downscaled copy past ``max_side`` too).
- ``none``: alpha is the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..errors import PixelsegError

REFINEMENTS = ("guided", "matting", "crf", "none")
DEFAULT_REFINEMENT = "crf"  # the lowest alpha error on the Weizmann validation split (benchmarks/remove_bg.py)
FOREGROUND_NAMES = ("foreground", "horse", "person")


def foreground_class(classes: Sequence[str], wanted: str | None = None) -> int:
    """The index of the foreground class of a model's ``classes``.

    ``wanted`` names it (case-insensitive). Without it: the first class named ``foreground``, ``horse`` or
    ``person`` (in that order of preference), else class 1 of a two-class (binary) model; a multi-class
    model without such a class needs ``wanted``.
    """
    lowered = [name.lower() for name in classes]
    if wanted is not None:
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        raise PixelsegError(f"the model has no class {wanted!r}; its classes are: {', '.join(classes)}")
    for name in FOREGROUND_NAMES:
        if name in lowered:
            return lowered.index(name)
    if len(classes) == 2:
        return 1
    raise PixelsegError(f"which class is the foreground? the model has {len(classes)} classes "
                        f"({', '.join(classes)}); pick one with --class")


def band_width(shape: tuple[int, int]) -> int:
    """The default half-width of the unknown ring: 1 % of the longer side, at least 2 pixels."""
    return max(2, round(0.01 * max(shape)))


def trimap_from_mask(mask: np.ndarray, band: int | None = None) -> np.ndarray:
    """A trimap (H, W) uint8 from a boolean mask: 255 foreground (the mask eroded by ``band``), 0
    background (outside the mask dilated by ``band``), 128 the unknown ring between them."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    band = band_width(mask.shape) if band is None else band
    if band < 0:
        raise PixelsegError(f"the trimap band must be at least 0 pixels, got {band}")
    trimap = np.where(mask, 255, 0).astype(np.uint8)
    if band == 0:
        return trimap
    # Erosion and dilation by a disk of radius band, by Euclidean distance transforms (linear time at any
    # band; outside the image counts as foreground for the erosion, as a border value of 1).
    inner = ndimage.distance_transform_edt(mask) > band
    outer = ndimage.distance_transform_edt(~mask) <= band
    trimap[outer & ~inner] = 128
    return trimap


def box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)² window around every pixel of (H, W[, C]) ``values``, the window clipped at
    the borders (divided by the number of pixels it covers), by summed-area tables."""
    height, width = values.shape[:2]

    def window_sums(array: np.ndarray, axis: int, size: int) -> np.ndarray:
        cumulative = np.cumsum(array, axis=axis, dtype=np.float64)
        pad = [(0, 0)] * array.ndim
        pad[axis] = (1, 0)
        cumulative = np.pad(cumulative, pad)
        index = np.arange(size)
        upper = np.minimum(index + radius + 1, size)
        lower = np.maximum(index - radius, 0)
        return np.take(cumulative, upper, axis=axis) - np.take(cumulative, lower, axis=axis)

    sums = window_sums(window_sums(values, 0, height), 1, width)
    rows = np.minimum(np.arange(height) + radius + 1, height) - np.maximum(np.arange(height) - radius, 0)
    cols = np.minimum(np.arange(width) + radius + 1, width) - np.maximum(np.arange(width) - radius, 0)
    counts = np.outer(rows, cols).astype(np.float64)
    return sums / (counts[..., None] if values.ndim == 3 else counts)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun & Tang's guided filter: ``source`` (H, W) filtered with ``guide`` (H, W) or (H, W, 3),
    both in [0, 1] scale; window (2·radius+1)², regularisation ``eps``. Returns (H, W) float64."""
    guide = np.asarray(guide, dtype=np.float64)
    source = np.asarray(source, dtype=np.float64)
    if guide.shape[:2] != source.shape:
        raise PixelsegError(f"the guide is {guide.shape[:2]} but the filtered image is {source.shape}")
    mean_p = box_mean(source, radius)
    if guide.ndim == 2:
        mean_i = box_mean(guide, radius)
        cov_ip = box_mean(guide * source, radius) - mean_i * mean_p
        var_i = box_mean(guide * guide, radius) - mean_i * mean_i
        a = cov_ip / (var_i + eps)
        b = mean_p - a * mean_i
        return box_mean(a, radius) * guide + box_mean(b, radius)
    mean_i = box_mean(guide, radius)  # (H, W, 3)
    cov_ip = box_mean(guide * source[..., None], radius) - mean_i * mean_p[..., None]
    channels = guide.shape[2]
    sigma = np.empty(guide.shape[:2] + (channels, channels))
    for i in range(channels):
        for j in range(i, channels):
            value = box_mean(guide[..., i] * guide[..., j], radius) - mean_i[..., i] * mean_i[..., j]
            sigma[..., i, j] = sigma[..., j, i] = value
    sigma += eps * np.eye(channels)
    a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]  # (H, W, 3): Σ⁻¹ cov per window
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_i)
    return np.einsum("hwc,hwc->hw", box_mean(a, radius), guide) + box_mean(b, radius)


def _unknown_tiles(unknown: np.ndarray, tile: int) -> list[tuple[int, int, int, int]]:
    height, width = unknown.shape
    tiles = []
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            if unknown[y:y + tile, x:x + tile].any():
                tiles.append((y, x, min(y + tile, height), min(x + tile, width)))
    return tiles


def guided_alpha(image: np.ndarray, mask: np.ndarray, trimap: np.ndarray, *, radius: int | None = None,
                 eps: float = 1e-3, tile: int = 512) -> np.ndarray:
    """Alpha (H, W) float32: the mask guided-filtered by the RGB ``image`` in the trimap's unknown ring,
    tile by tile (a margin of 2·radius makes every tile exact), the mask elsewhere."""
    unknown = trimap == 128
    alpha = (trimap == 255).astype(np.float32)
    radius = radius or max(2, round(0.01 * max(mask.shape)))
    margin = 2 * radius
    height, width = mask.shape
    for y0, x0, y1, x1 in _unknown_tiles(unknown, tile):
        top, left = max(0, y0 - margin), max(0, x0 - margin)
        bottom, right = min(height, y1 + margin), min(width, x1 + margin)
        guide = image[top:bottom, left:right].astype(np.float64) / 255.0
        filtered = guided_filter(guide, mask[top:bottom, left:right].astype(np.float64), radius, eps)
        inner = filtered[y0 - top:y1 - top, x0 - left:x1 - left]
        ring = unknown[y0:y1, x0:x1]
        alpha[y0:y1, x0:x1][ring] = np.clip(inner[ring], 0.0, 1.0)
    return alpha


def matting_laplacian(image: np.ndarray, active: np.ndarray, eps: float = 1e-7):
    """Levin et al.'s matting Laplacian (N×N scipy CSR, N = H·W) of the 3×3 windows centred on the
    ``active`` pixels (windows wholly inside the image): for pixels i, j of a window k,
    ``δij − (1 + (Iᵢ − μₖ)ᵀ (Σₖ + eps/9 · I₃)⁻¹ (Iⱼ − μₖ)) / 9``, summed over windows."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy import sparse

    height, width = image.shape[:2]
    pixels = image.astype(np.float64) / 255.0
    centres = active.copy()
    centres[[0, -1], :] = False
    centres[:, [0, -1]] = False
    cy, cx = np.nonzero(centres)
    index = np.arange(height * width).reshape(height, width)
    windows = sliding_window_view(pixels, (3, 3), axis=(0, 1))[cy - 1, cx - 1]  # (K, 3 channels, 3, 3)
    colours = windows.reshape(len(cy), 3, 9).transpose(0, 2, 1)  # (K, 9, 3)
    ids = sliding_window_view(index, (3, 3))[cy - 1, cx - 1].reshape(len(cy), 9)  # (K, 9)
    mean = colours.mean(axis=1, keepdims=True)
    centred = colours - mean
    covariance = np.einsum("kni,knj->kij", centred, centred) / 9 + (eps / 9) * np.eye(3)
    inverse = np.linalg.inv(covariance)
    values = (1.0 + np.einsum("kni,kij,kmj->knm", centred, inverse, centred)) / 9  # (K, 9, 9)
    values = np.eye(9)[None] - values
    rows = np.repeat(ids, 9, axis=1).ravel()
    cols = np.tile(ids, (1, 9)).ravel()
    return sparse.csr_matrix((values.ravel(), (rows, cols)), shape=(height * width, height * width))


def closed_form_alpha(image: np.ndarray, trimap: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Closed-form matting of the trimap's unknown pixels: minimise ``αᵀLα`` with the known pixels fixed,
    i.e. solve ``L_uu α_u = −L_uk α_k`` (scipy's sparse direct solver). Returns alpha (H, W) float32."""
    from scipy import ndimage
    from scipy.sparse.linalg import spsolve

    unknown = trimap == 128
    alpha = (trimap == 255).astype(np.float64)
    if not unknown.any():
        return alpha.astype(np.float32)
    # Every window that holds an unknown pixel: centres within one pixel of the unknown ring.
    active = ndimage.binary_dilation(unknown, np.ones((3, 3), bool))
    laplacian = matting_laplacian(image, active, eps)
    flat_unknown = np.flatnonzero(unknown)
    known_ring = ndimage.binary_dilation(active, np.ones((3, 3), bool)) & ~unknown  # what those windows touch
    flat_known = np.flatnonzero(known_ring)
    l_uu = laplacian[flat_unknown][:, flat_unknown]
    l_uk = laplacian[flat_unknown][:, flat_known]
    rhs = -l_uk @ alpha.ravel()[flat_known]
    l_uu = l_uu + 1e-9 * _identity(len(flat_unknown))  # unknown pixels no window reaches stay solvable
    solution = spsolve(l_uu.tocsc(), rhs)
    alpha.ravel()[flat_unknown] = np.clip(solution, 0.0, 1.0)
    return alpha.astype(np.float32)


def _identity(size: int):
    from scipy import sparse

    return sparse.identity(size, format="csr")


def crf_alpha(image: np.ndarray, trimap: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Alpha (H, W) float32: the dense CRF's foreground marginal in the unknown ring, with the known pixels
    ``confidence`` sure of their side and the ring at 50/50, the trimap elsewhere."""
    import torch

    from .dense_crf import dense_crf, unary_from_probabilities

    foreground = np.where(trimap == 255, confidence, np.where(trimap == 0, 1.0 - confidence, 0.5))
    probabilities = torch.from_numpy(np.stack([1.0 - foreground, foreground]).astype(np.float32))
    marginals = dense_crf(unary_from_probabilities(probabilities), np.ascontiguousarray(image[..., :3]))
    alpha = (trimap == 255).astype(np.float32)
    unknown = trimap == 128
    alpha[unknown] = marginals[1].numpy()[unknown]
    return alpha


def _downscaled(image: np.ndarray, trimap: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = trimap.shape
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    small_trimap = np.asarray(Image.fromarray(trimap).resize(size, Image.Resampling.NEAREST))
    return small_image, small_trimap


def _upscaled(alpha: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    resized = Image.fromarray(alpha.astype(np.float32), mode="F").resize((shape[1], shape[0]),
                                                                          Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def alpha_matte(image: np.ndarray, mask: np.ndarray, method: str = DEFAULT_REFINEMENT, *, band: int | None = None,
                max_side: int = 1024) -> np.ndarray:
    """The alpha matte (H, W) float32 in [0, 1] of a hard foreground ``mask`` (H, W) on the RGB uint8
    ``image`` (H, W, 3), refined by ``method`` (one of :data:`REFINEMENTS`) in a ring of ``band`` pixels
    (default :func:`band_width`) around the mask's edge; ``matting`` and ``crf`` work on a copy whose
    longer side is at most ``max_side`` when the photo is larger."""
    if method not in REFINEMENTS:
        raise PixelsegError(f"unknown refinement {method!r}; choose one of: {', '.join(REFINEMENTS)}")
    mask = np.asarray(mask, dtype=bool)
    if image.shape[:2] != mask.shape:
        raise PixelsegError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}")
    image = np.ascontiguousarray(image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, 2))
    if method == "none":
        return mask.astype(np.float32)
    trimap = trimap_from_mask(mask, band)
    if method == "guided":
        return guided_alpha(image, mask, trimap)
    refine = closed_form_alpha if method == "matting" else crf_alpha
    if max(mask.shape) <= max_side:
        return refine(image, trimap)
    small_image, small_trimap = _downscaled(image, trimap, max_side)
    alpha = (trimap == 255).astype(np.float32)
    unknown = trimap == 128
    alpha[unknown] = _upscaled(refine(small_image, small_trimap), mask.shape)[unknown]
    return alpha


def rgba(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The RGB uint8 ``image`` (H, W, 3) with ``alpha`` (H, W) in [0, 1] as its fourth channel."""
    channel = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    return np.dstack([image[..., :3].astype(np.uint8), channel])


def checkerboard_composite(cutout: np.ndarray, square: int = 8) -> np.ndarray:
    """An RGBA cut-out (H, W, 4) composited over a light-grey checkerboard, RGB uint8."""
    height, width = cutout.shape[:2]
    y, x = np.ogrid[:height, :width]
    board = np.where(((y // square) + (x // square)) % 2 == 0, 255, 204).astype(np.float32)[..., None]
    alpha = cutout[..., 3:4].astype(np.float32) / 255.0
    return np.rint(cutout[..., :3] * alpha + board * (1.0 - alpha)).astype(np.uint8)
