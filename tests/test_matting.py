"""Alpha mattes from hard masks (``pixelseg.refiners.matting``): guided filter, closed-form matting, trimaps."""

from __future__ import annotations

import numpy as np
import pytest

from pixelseg.errors import PixelsegError
from pixelseg.refiners.matting import (
    alpha_matte,
    box_mean,
    closed_form_alpha,
    crf_alpha,
    foreground_class,
    guided_alpha,
    guided_filter,
    matting_laplacian,
    rgba,
    trimap_from_mask,
)


def direct_box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """The mean over each pixel's (2r+1)² window clipped at the borders, one window at a time."""
    height, width = values.shape[:2]
    result = np.empty(values.shape)
    for y in range(height):
        for x in range(width):
            window = values[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
            result[y, x] = window.reshape(-1, *values.shape[2:]).mean(axis=0)
    return result


def direct_guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun & Tang (ECCV 2010), eqs. (5)-(8) and (14)-(16) written window by window: a ridge regression
    of ``source`` on the guide's colour in every window, then each pixel averages the fits of its windows."""
    height, width = source.shape
    colour = guide.reshape(height, width, -1)
    channels = colour.shape[2]
    a = np.zeros((height, width, channels))
    b = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            rows, cols = slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1)
            window = colour[rows, cols].reshape(-1, channels)
            target = source[rows, cols].reshape(-1)
            mean = window.mean(axis=0)
            covariance = (window - mean).T @ (window - mean) / len(window)
            cross = (window - mean).T @ (target - target.mean()) / len(window)
            a[y, x] = np.linalg.solve(covariance + eps * np.eye(channels), cross)
            b[y, x] = target.mean() - a[y, x] @ mean
    output = np.empty((height, width))
    for y in range(height):
        for x in range(width):
            rows, cols = slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1)
            output[y, x] = a[rows, cols].reshape(-1, channels).mean(0) @ colour[y, x] + b[rows, cols].mean()
    return output


def blended_edge(height: int = 48, width: int = 64, noise: float = 8.0, seed: int = 0):
    """A red object over a blue background meeting in a linear ramp of alpha 16 pixels wide (the true
    alpha, known), plus uniform colour noise; and the hard mask alpha >= 0.5."""
    rng = np.random.default_rng(seed)
    truth = np.clip((np.arange(width) - 24) / 16, 0, 1)[None].repeat(height, 0)
    foreground, background = np.array([200.0, 40.0, 40.0]), np.array([30.0, 90.0, 200.0])
    image = truth[..., None] * foreground + (1 - truth[..., None]) * background
    image = np.clip(image + rng.uniform(-noise, noise, image.shape), 0, 255).astype(np.uint8)
    return image, truth, truth >= 0.5


def test_box_mean_matches_direct_window_means() -> None:
    values = np.random.default_rng(1).normal(size=(9, 13, 3))
    for radius in (1, 3, 7):
        np.testing.assert_allclose(box_mean(values, radius), direct_box_mean(values, radius), atol=1e-12)
        np.testing.assert_allclose(box_mean(values[..., 0], radius), direct_box_mean(values[..., 0], radius),
                                   atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_matches_the_window_by_window_definition(channels: int) -> None:
    rng = np.random.default_rng(2)
    guide = rng.uniform(size=(11, 14, channels))
    source = (rng.uniform(size=(11, 14)) > 0.5).astype(float)
    guide_arg = guide[..., 0] if channels == 1 else guide
    for radius, eps in ((1, 1e-2), (2, 1e-3), (4, 1e-1)):
        np.testing.assert_allclose(guided_filter(guide_arg, source, radius, eps),
                                   direct_guided_filter(guide, source, radius, eps), atol=1e-8)


def test_guiding_an_image_by_itself_with_tiny_eps_returns_it() -> None:
    # He et al. 2010, sec. 3.2: with I = p and eps -> 0, a = 1 and b = 0 in every window, so q = p.
    image = np.random.default_rng(3).uniform(size=(20, 24))
    np.testing.assert_allclose(guided_filter(image, image, 3, 1e-10), image, atol=1e-5)
    # ... while a large eps smooths it towards the window means
    assert np.abs(guided_filter(image, image, 3, 10.0) - image).mean() > 0.1


def test_tiled_guided_alpha_equals_the_whole_image_filter() -> None:
    image, _, mask = blended_edge(70, 90)
    trimap = trimap_from_mask(mask, 10)
    whole = guided_alpha(image, mask, trimap, radius=4, tile=1000)
    tiled = guided_alpha(image, mask, trimap, radius=4, tile=16)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    direct = np.clip(guided_filter(image / 255.0, mask.astype(float), 4, 1e-3), 0, 1)
    ring = trimap == 128
    np.testing.assert_allclose(whole[ring], direct[ring], atol=1e-6)
    np.testing.assert_array_equal(whole[~ring], mask[~ring])


def test_matting_laplacian_is_symmetric_and_has_affine_colour_functions_in_its_null_space() -> None:
    # Levin et al. (PAMI 2008), Theorem 2: alpha = a·I + b (one affine map of the colour over the whole
    # image) has zero cost as eps -> 0; in particular constants do (rows sum to 0).
    image = np.random.default_rng(4).integers(0, 256, (12, 15, 3)).astype(np.uint8)
    laplacian = matting_laplacian(image, np.ones((12, 15), bool), eps=1e-9)
    assert abs(laplacian - laplacian.T).max() < 1e-9
    np.testing.assert_allclose(laplacian @ np.ones(12 * 15), 0, atol=1e-9)
    pixels = image.reshape(-1, 3) / 255.0
    affine = pixels @ np.array([0.7, -0.2, 0.4]) + 0.1
    assert np.abs(laplacian @ affine).max() < 1e-5
    assert np.abs(laplacian @ np.random.default_rng(5).uniform(size=12 * 15)).max() > 0.1


def test_closed_form_matting_recovers_a_blended_edge_within_0_03() -> None:
    image, truth, mask = blended_edge()
    trimap = trimap_from_mask(mask, 14)  # the ring covers the whole ramp
    ring = trimap == 128
    alpha = closed_form_alpha(image, trimap)
    error = np.abs(alpha - truth)[ring].mean()
    assert error < 0.03  # measured 0.019 with this noise; the hard mask's own error in the ring is 0.18
    assert np.abs(mask.astype(float) - truth)[ring].mean() > 6 * error
    np.testing.assert_array_equal(alpha[~ring], mask[~ring])


def test_closed_form_matting_through_alpha_matte_on_a_downscaled_copy() -> None:
    image, truth, mask = blended_edge(96, 128)
    full = alpha_matte(image, mask, "matting", band=28, max_side=1024)
    small = alpha_matte(image, mask, "matting", band=28, max_side=64)
    ring = trimap_from_mask(mask, 28) == 128
    assert small.shape == full.shape == mask.shape
    assert np.abs(small - truth)[ring].mean() < 0.05
    assert np.abs(full - truth)[ring].mean() < 0.05


def test_trimap_ring_is_the_dilation_minus_the_erosion_by_band_pixels() -> None:
    mask = np.zeros((41, 41), bool)
    mask[10:31, 10:31] = True
    trimap = trimap_from_mask(mask, 3)
    row = trimap[20]
    assert (row[:7] == 0).all() and (row[7:13] == 128).all() and (row[13:28] == 255).all()
    assert (row[28:34] == 128).all() and (row[34:] == 0).all()
    np.testing.assert_array_equal(trimap_from_mask(mask, 0), np.where(mask, 255, 0))
    with pytest.raises(PixelsegError, match="at least 0"):
        trimap_from_mask(mask, -1)


def test_crf_alpha_only_changes_the_ring_and_follows_the_colours() -> None:
    image, truth, _ = blended_edge(noise=2.0)
    shifted = np.zeros_like(truth, dtype=bool)
    shifted[:, 34:] = True  # the mask's edge 6 px right of the true one (column 32)
    trimap = trimap_from_mask(shifted, 8)
    alpha = crf_alpha(image, trimap)
    ring = trimap == 128
    np.testing.assert_array_equal(alpha[~ring], shifted[~ring])
    assert np.abs((alpha >= 0.5) != (truth >= 0.5))[ring].mean() < np.abs(shifted != (truth >= 0.5))[ring].mean()


@pytest.mark.parametrize("method", ["guided", "matting", "crf", "none"])
def test_alpha_matte_keeps_size_range_and_the_certain_regions(method: str) -> None:
    image, _, mask = blended_edge()
    alpha = alpha_matte(image, mask, method)
    assert alpha.shape == mask.shape and alpha.dtype == np.float32
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert (alpha[:, :10] == 0).all() and (alpha[:, -10:] == 1).all()
    cut = rgba(image, alpha)
    assert cut.shape == (*mask.shape, 4) and (cut[..., :3] == image).all()


def test_alpha_matte_refuses_unknown_methods_and_mismatched_masks() -> None:
    image, _, mask = blended_edge()
    with pytest.raises(PixelsegError, match="unknown refinement"):
        alpha_matte(image, mask, "poisson")
    with pytest.raises(PixelsegError, match="the mask is"):
        alpha_matte(image, mask[:-1], "guided")


def test_foreground_class_rule() -> None:
    assert foreground_class(["background", "horse"]) == 1
    assert foreground_class(["bg", "thing"]) == 1
    assert foreground_class(["sky", "person", "car"]) == 1
    assert foreground_class(["Foreground", "background"]) == 0
    assert foreground_class(["sky", "person", "car"], "CAR") == 2
    with pytest.raises(PixelsegError, match="pick one with --class"):
        foreground_class(["sky", "road", "car"])
    with pytest.raises(PixelsegError, match="no class 'boat'"):
        foreground_class(["background", "horse"], "boat")


def test_trimap_equals_morphology_with_a_disk_on_a_random_mask() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(6)
    mask = ndimage.binary_opening(rng.uniform(size=(60, 75)) > 0.4, iterations=2)
    for band in (1, 3, 6):
        y, x = np.ogrid[-band:band + 1, -band:band + 1]
        disk = x * x + y * y <= band * band
        inner = ndimage.binary_erosion(mask, disk, border_value=1)
        outer = ndimage.binary_dilation(mask, disk)
        expected = np.where(mask, 255, 0)
        expected[outer & ~inner] = 128
        np.testing.assert_array_equal(trimap_from_mask(mask, band), expected)
