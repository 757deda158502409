"""Boykov–Jolly graph cut and GrabCut on an image with a known object."""

from __future__ import annotations

import numpy as np
import pytest

from pixelseg.classical.graphcut import BACKGROUND, FOREGROUND, boykov_jolly, grabcut
from pixelseg.classical.grid_energy import brute_force, grid_energy
from pixelseg.errors import PixelsegError


def disk_image(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A textured orange disk on a textured blue background; returns (image, true mask)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    truth = (rows - size / 2) ** 2 + (cols - size / 2.2) ** 2 < (size / 4) ** 2
    image = np.where(truth[..., None], [220, 120, 40], [40, 80, 200]).astype(np.float64)
    image += rng.normal(0, 30, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_boykov_jolly_segments_the_object_from_two_scribbles() -> None:
    image, truth = disk_image()
    seeds = np.zeros(truth.shape, dtype=np.uint8)
    seeds[30:34, 26:32] = FOREGROUND
    seeds[2:6, 2:60] = BACKGROUND
    mask = boykov_jolly(image, seeds)
    assert iou(mask, truth) > 0.95
    assert mask[seeds == FOREGROUND].all() and not mask[seeds == BACKGROUND].any()


def test_boykov_jolly_from_probabilities_is_the_exact_minimum_of_its_energy() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (3, 4, 3)).astype(np.uint8)
    probability = rng.random((3, 4))
    mask = boykov_jolly(image, foreground_probability=probability, smoothness=0.7, connectivity=4)
    unary = np.stack([-np.log(1 - probability), -np.log(probability)], axis=2)
    energy = grid_energy(unary, smoothness=0.7, connectivity=4, image=image)
    assert energy(mask.astype(int)) == pytest.approx(energy(brute_force(energy)))


def test_contrast_sensitive_smoothing_cleans_noisy_probabilities() -> None:
    image, truth = disk_image(2)
    rng = np.random.default_rng(3)
    probability = np.clip(np.where(truth, 0.65, 0.35) + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    noisy = probability > 0.5
    mask = boykov_jolly(image, foreground_probability=probability, smoothness=2.0)
    assert iou(mask, truth) > iou(noisy, truth) + 0.15


def test_grabcut_extracts_the_object_from_a_box() -> None:
    image, truth = disk_image(4)
    mask = grabcut(image, box=(8, 8, 56, 56))
    assert iou(mask, truth) > 0.9


def test_scribbles_of_another_size_are_rejected_with_a_clear_message() -> None:
    image, _ = disk_image()
    with pytest.raises(PixelsegError, match="scribble map is 10x10 but the image is 64x64"):
        boykov_jolly(image, np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(PixelsegError, match="both foreground"):
        boykov_jolly(image, np.full((64, 64), FOREGROUND, dtype=np.uint8))
