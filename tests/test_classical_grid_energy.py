"""Grid energy solvers: exactness on tiny grids (brute force), the 2x Potts bound, never worse than ICM."""

from __future__ import annotations

import numpy as np
import pytest

from pixelseg.classical.grid_energy import (
    alpha_beta_swap,
    alpha_expansion,
    brute_force,
    grid_energy,
    icm,
    loopy_belief_propagation,
    simulated_annealing,
)


def random_energy(seed: int, height: int, width: int, labels: int, connectivity: int = 4,
                  smoothness: float = 0.7):
    rng = np.random.default_rng(seed)
    return grid_energy(rng.random((height, width, labels)) * 2, smoothness=smoothness,
                       connectivity=connectivity)


def noisy_piecewise_constant(seed: int, labels: int = 4, size: int = 16):
    """Unaries of a blocky label map seen through heavy noise."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=int)
    truth[: size // 2, size // 2:] = 1
    truth[size // 2:, : size // 2] = 2
    truth[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 3
    unary = rng.random((size, size, labels)) * 1.5
    unary[np.arange(size)[:, None], np.arange(size)[None, :], truth] -= 0.45
    return truth, unary


@pytest.mark.parametrize("seed", range(4))
def test_expansion_and_swap_find_the_exact_optimum_of_binary_problems(seed: int) -> None:
    energy = random_energy(seed, 3, 4, labels=2, smoothness=0.8)
    optimum = energy(brute_force(energy))
    assert energy(alpha_expansion(energy)) == pytest.approx(optimum)
    assert energy(alpha_beta_swap(energy)) == pytest.approx(optimum)


@pytest.mark.parametrize("seed", range(5))
def test_alpha_expansion_stays_within_twice_the_optimum_for_potts(seed: int) -> None:
    energy = random_energy(seed, 3, 3, labels=3, connectivity=8, smoothness=0.9)
    optimum = energy(brute_force(energy))
    found = energy(alpha_expansion(energy))
    assert optimum <= found + 1e-9
    assert found <= 2 * optimum + 1e-9


def test_expansion_with_a_truncated_linear_metric_is_near_the_optimum() -> None:
    rng = np.random.default_rng(7)
    levels = np.arange(4)
    truncated_linear = np.minimum(np.abs(levels[:, None] - levels[None, :]), 2).astype(float)
    energy = grid_energy(rng.random((3, 3, 4)) * 2, label_cost=truncated_linear, smoothness=0.5)
    optimum = energy(brute_force(energy))
    # Bound for a metric: 2 * max V / min nonzero V = 4.
    assert optimum <= energy(alpha_expansion(energy)) <= 4 * optimum


@pytest.mark.parametrize("seed", range(3))
def test_belief_propagation_is_exact_on_a_chain(seed: int) -> None:
    energy = random_energy(seed, 1, 8, labels=3, smoothness=0.8)
    assert energy(loopy_belief_propagation(energy, damping=0.0)) == pytest.approx(energy(brute_force(energy)))


@pytest.mark.parametrize("sampler", ["gibbs", "metropolis"])
def test_annealing_usually_finds_the_optimum_of_a_tiny_grid(sampler: str) -> None:
    energy = random_energy(11, 3, 3, labels=3)
    optimum = energy(brute_force(energy))
    found = [energy(simulated_annealing(energy, sweeps=300, sampler=sampler, seed=seed)) for seed in range(5)]
    assert sum(value == pytest.approx(optimum) for value in found) >= 3
    assert max(found) <= 1.05 * optimum


@pytest.mark.parametrize("connectivity", [4, 8])
def test_every_solver_reaches_no_higher_energy_than_icm_from_the_same_start(connectivity: int) -> None:
    truth, unary = noisy_piecewise_constant(3)
    energy = grid_energy(unary, smoothness=1.6 / connectivity, connectivity=connectivity)
    start = unary.argmin(2)
    icm_energy = energy(icm(energy, start))
    assert icm_energy < energy(start)
    results = {
        "expansion": alpha_expansion(energy, start),
        "swap": alpha_beta_swap(energy, start),
        "bp": loopy_belief_propagation(energy),
        "gibbs": simulated_annealing(energy, start, sweeps=300, sampler="gibbs"),
        "metropolis": simulated_annealing(energy, start, sweeps=300, sampler="metropolis"),
    }
    for name, labels in results.items():
        assert energy(labels) <= icm_energy + 1e-9, name
    assert (results["expansion"] == truth).mean() > 0.9


def test_contrast_sensitive_weights_are_small_across_image_edges() -> None:
    image = np.zeros((4, 4, 3))
    image[:, 2:] = 255
    energy = grid_energy(np.zeros((4, 4, 2)), image=image)
    across = (energy.first % 4 == 1) & (energy.second % 4 == 2)
    assert energy.weight[across].max() < 0.1 * energy.weight[~across].min()


def test_bad_connectivity_is_rejected() -> None:
    with pytest.raises(ValueError, match="connectivity"):
        grid_energy(np.zeros((2, 2, 2)), connectivity=6)
