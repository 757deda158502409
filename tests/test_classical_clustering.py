"""k-means in XYRGB (checked against scikit-learn), region merging, SLIC, DP-GMM and mean shift."""

from __future__ import annotations

import numpy as np
import pytest

from pixelseg.classical.clustering import dpgmm_segments, mean_shift_segments
from pixelseg.classical.kmeans import kmeans, kmeans_segments, merge_regions, slic_segments
from pixelseg.errors import PixelsegError

COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 60, 220]])


def three_colour_image(seed: int = 0, size: int = 48, noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """Three flat colour regions (left half, top right, bottom right) with Gaussian noise."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=int)
    truth[: size // 2, size // 2:] = 1
    truth[size // 2:, size // 2:] = 2
    image = COLOURS[truth] + rng.normal(0, noise, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def agrees_with_truth(labels: np.ndarray, truth: np.ndarray) -> bool:
    """Each true region is one segment and different regions are different segments."""
    segments = [np.unique(labels[truth == region]) for region in np.unique(truth)]
    return all(s.size == 1 for s in segments) and len({int(s[0]) for s in segments}) == len(segments)


def test_kmeans_inertia_matches_scikit_learn() -> None:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(centre, 1.0, (200, 5)) for centre in (0, 6, 12, 18)])
    _, _, ours = min((kmeans(points, 4, seed=seed) for seed in range(4)), key=lambda r: r[2])
    reference = KMeans(4, n_init=4, random_state=0).fit(points).inertia_
    assert ours == pytest.approx(reference, rel=1e-3)


def test_kmeans_without_spatial_weight_recovers_the_colour_regions() -> None:
    image, truth = three_colour_image()
    assert agrees_with_truth(kmeans_segments(image, 3, spatial_weight=0.0), truth)


def test_region_merging_joins_oversegmented_regions_of_the_same_colour() -> None:
    image, truth = three_colour_image(1)
    over = kmeans_segments(image, 30, spatial_weight=1.0)
    assert over.max() + 1 >= 20
    merged = merge_regions(image, over, threshold=40.0, min_size=10)
    assert merged.max() + 1 == 3
    assert agrees_with_truth(merged, truth)


def test_slic_gives_about_k_compact_superpixels() -> None:
    image, _ = three_colour_image(2)
    segments = slic_segments(image, 16)
    assert 8 <= segments.max() + 1 <= 24


def test_dirichlet_process_mixture_finds_the_number_of_regions() -> None:
    image, truth = three_colour_image(3)
    labels = dpgmm_segments(image, max_components=10, spatial_weight=0.0)
    assert labels.max() + 1 == 3
    assert agrees_with_truth(labels, truth)


def test_mean_shift_finds_the_number_of_regions() -> None:
    image, truth = three_colour_image(4)
    labels = mean_shift_segments(image, spatial_weight=0.0)
    assert labels.max() + 1 == 3
    assert agrees_with_truth(labels, truth)


def test_k_below_one_is_a_clear_error() -> None:
    image, _ = three_colour_image()
    with pytest.raises(PixelsegError, match="K must be at least 1"):
        kmeans_segments(image, 0)
