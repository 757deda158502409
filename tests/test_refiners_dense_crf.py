"""Dense CRF (Krähenbühl & Koltun 2011) on the permutohedral lattice, checked against pydensecrf2."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.refiners.dense_crf import DenseCRFConfig, dense_crf, refine_logits, unary_from_probabilities
from pixelseg.refiners.permutohedral import PermutohedralLattice

CAMVID_CLASSES = 11


def camvid_pair(root: Path, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    names = sorted((root / split).glob("*.png"))
    image = np.array(Image.open(names[index]).convert("RGB"))
    label = np.asarray(Image.open(root / f"{split}annot" / names[index].name))
    return np.ascontiguousarray(image), label


def pixel_features(image: np.ndarray) -> torch.Tensor:
    """(H*W, 5): colour and position of every pixel, in [0, 1]."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    stacked = np.concatenate([image / 255.0, (xs / width)[..., None], (ys / height)[..., None]], axis=2)
    return torch.as_tensor(stacked.reshape(-1, 5), dtype=torch.float32)


@pytest.fixture
def camvid_network(camvid_root: Path) -> torch.nn.Module:
    return train_pixel_network(camvid_root)


@functools.lru_cache(maxsize=1)
def train_pixel_network(root: Path) -> torch.nn.Module:
    """Unaries from a small per-pixel network (colour + position -> 11 classes) trained on CamVid.

    A two-layer perceptron fitted for 150 steps on pixels of 6 training images: a real but weak
    classifier, so its labelling is noisy and the CRF has work to do.
    """
    generator = torch.Generator().manual_seed(0)
    features, targets = [], []
    for index in range(0, 360, 60):
        image, label = camvid_pair(root, "train", index)
        flat_labels = torch.as_tensor(label.reshape(-1).astype(np.int64))
        keep = torch.nonzero(flat_labels < CAMVID_CLASSES).squeeze(1)
        chosen = keep[torch.randperm(keep.numel(), generator=generator)[:2000]]
        features.append(pixel_features(image)[chosen])
        targets.append(flat_labels[chosen])
    inputs, labels = torch.cat(features), torch.cat(targets)
    network = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.ReLU(), torch.nn.Linear(64, CAMVID_CLASSES))
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(network(inputs), labels).backward()
        optimiser.step()
    return network


def camvid_unary(root: Path, network: torch.nn.Module, index: int) -> tuple[np.ndarray, torch.Tensor]:
    image, _ = camvid_pair(root, "test", index)
    with torch.no_grad():
        probabilities = network(pixel_features(image)).softmax(1)
    unary = unary_from_probabilities(probabilities.T.reshape(CAMVID_CLASSES, *image.shape[:2]))
    return image, unary.contiguous()


def pydensecrf_marginals(unary: torch.Tensor, image: np.ndarray, config: DenseCRFConfig) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    classes, height, width = unary.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(classes, -1).numpy()))
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(sxy=config.bilateral_sxy, srgb=config.bilateral_srgb, rgbim=image,
                             compat=config.bilateral_compat)
    return np.asarray(crf.inference(config.iterations)).reshape(classes, height, width)


def test_dense_crf_agrees_with_pydensecrf_on_camvid_test_images(camvid_root: Path,
                                                                 camvid_network: torch.nn.Module) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    config = DenseCRFConfig()
    for index in (0, 120):
        image, unary = camvid_unary(camvid_root, camvid_network, index)
        marginals = dense_crf(unary, image, config).numpy()
        reference_marginals = pydensecrf_marginals(unary, image, config)
        assert np.abs(marginals - reference_marginals).max() < 1e-4
        ours, reference = marginals.argmax(0), reference_marginals.argmax(0)
        unary_labels = unary.argmin(0).numpy()
        assert (ours == reference).mean() >= 0.99
        assert (reference != unary_labels).mean() > 0.01  # the CRF really changed the labelling


def test_dense_crf_agrees_with_pydensecrf_for_other_parameters(camvid_root: Path,
                                                                camvid_network: torch.nn.Module) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    config = DenseCRFConfig(gaussian_sxy=1.5, gaussian_compat=2.0, bilateral_sxy=40.0, bilateral_srgb=8.0,
                            bilateral_compat=6.0, iterations=8)
    image, unary = camvid_unary(camvid_root, camvid_network, 60)
    image, unary = np.ascontiguousarray(image[:180, :240]), unary[:, :180, :240].contiguous()
    ours = dense_crf(unary, image, config).argmax(0).numpy()
    assert (ours == pydensecrf_marginals(unary, image, config).argmax(0)).mean() >= 0.99


# The lattice's code paths: neighbours from a lookup table (a pixel grid) or by binary search, int32 or
# int64 codes (far-apart clusters), simplices grouped by two sorts (7-d features).
@pytest.mark.parametrize("layout", ["cube", "grid", "clusters", "7-d"])
def test_permutohedral_filter_approximates_an_exact_gaussian_filter(layout: str) -> None:
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(400, 3, generator=generator) * 4.0
    if layout == "grid":
        ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
        points = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1) / 1.5
    elif layout == "clusters":
        points += 150.0 * torch.eye(3).repeat(134, 1)[:400] * torch.arange(400)[:, None].remainder(2)
    elif layout == "7-d":
        points = torch.randn(400, 7, generator=generator) * 1.5
    values = torch.rand(400, 2, generator=generator)
    squared = torch.cdist(points, points) ** 2
    exact = torch.exp(-squared / 2) @ values
    exact_norm = torch.exp(-squared / 2).sum(1, keepdim=True)
    lattice = PermutohedralLattice(points)
    approximate = lattice.filter(values) / lattice.filter(torch.ones(400, 1))
    relative = ((approximate - exact / exact_norm).abs() / (exact / exact_norm).abs()).mean()
    assert relative < (0.25 if layout == "7-d" else 0.05)  # the lattice is coarser in more dimensions


def test_permutohedral_filter_gradient_is_its_transpose() -> None:
    generator = torch.Generator().manual_seed(5)
    lattice = PermutohedralLattice(torch.rand(300, 5, generator=generator) * 3.0)
    values = torch.rand(300, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(300, 4, generator=generator, dtype=torch.float64)
    (lattice.filter(values) * weights).sum().backward()
    dense = torch.stack([lattice.filter(column[:, None].double())[:, 0].detach()
                         for column in torch.eye(300, dtype=torch.float64)], dim=1)   # (300, 300) matrix
    assert not torch.allclose(dense, dense.T, atol=1e-3)  # the axis blurs do not commute: not symmetric
    assert torch.allclose(values.grad, dense.T @ weights, atol=1e-10)


def test_dense_crf_is_differentiable_in_the_unaries() -> None:
    generator = torch.Generator().manual_seed(2)
    image = (torch.rand(3, 4, 3, generator=generator) * 255).to(torch.uint8)
    unary = torch.rand(2, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    config = DenseCRFConfig(bilateral_sxy=3.0, bilateral_srgb=20.0, iterations=2)
    assert torch.autograd.gradcheck(lambda u: dense_crf(u, image, config), (unary,), eps=1e-6, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dense_crf_on_cuda_matches_cpu() -> None:
    generator = torch.Generator().manual_seed(3)
    image = (torch.rand(60, 80, 3, generator=generator) * 255).to(torch.uint8)
    unary = torch.rand(5, 60, 80, generator=generator) * 3
    cpu = dense_crf(unary, image)
    gpu = dense_crf(unary.cuda(), image.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_refining_noisy_logits_recovers_the_regions_of_the_image() -> None:
    generator = torch.Generator().manual_seed(4)
    truth = torch.zeros(40, 50, dtype=torch.long)
    truth[:, 25:] = 1
    image = torch.where(truth[..., None] == 1, torch.tensor([200, 40, 40]), torch.tensor([40, 40, 200]))
    logits = torch.nn.functional.one_hot(truth, 2).permute(2, 0, 1).float() * 0.8
    logits = logits + torch.randn(2, 40, 50, generator=generator)
    noisy = (logits.argmax(0) == truth).float().mean()
    refined = (refine_logits(logits, image.to(torch.uint8), DenseCRFConfig(bilateral_sxy=20.0)) == truth)
    assert noisy < 0.85 and refined.float().mean() > 0.97


def test_in_place_potts_mean_field_matches_the_differentiable_one() -> None:
    generator = torch.Generator().manual_seed(6)
    image = (torch.rand(30, 40, 3, generator=generator) * 255).to(torch.uint8)
    unary = torch.rand(4, 30, 40, generator=generator) * 4
    config = DenseCRFConfig(bilateral_sxy=10.0, iterations=4)
    # The algebra: in float64 both paths compute the same marginals up to rounding at 1e-16.
    in_place_64 = dense_crf(unary.double(), image, config)                      # no gradients: in-place path
    differentiable_64 = dense_crf(unary.double().requires_grad_(), image, config).detach()
    assert torch.allclose(in_place_64, differentiable_64, rtol=0.0, atol=1e-12)
    # float32: each step rounds logits of size up to max U + sum of the weights (by an ulp at most) and
    # the next step amplifies an error in the logits by at most L = 1/2 (the softmax's Jacobian, max norm)
    # times sum_m w_m max_i (k_m * 1)_i (the message's), so after T steps the marginals are off by at most
    # ulp * (1 + L + ... + L^(T-1)) to first order (L = 7.5, 9e-4 here). Re-associated float32 sums (the
    # fused in-place updates, the CPU's vector width) land anywhere within that bound: the two paths
    # differ by 2e-5 on an AVX-512 Xeon, less on others; the former atol of 1e-5 was below the noise.
    from pixelseg.refiners.dense_crf import GaussianKernel, bilateral_features, spatial_kernel

    kernels = [spatial_kernel(30, 40, config.gaussian_sxy),
               GaussianKernel(bilateral_features(image, config.bilateral_sxy, config.bilateral_srgb))]
    ones = torch.ones(30 * 40, 1)
    weights = (config.gaussian_compat, config.bilateral_compat)
    gain = 0.5 * sum(weight * float(kernel(ones).max()) for weight, kernel in zip(weights, kernels, strict=True))
    largest_logit = float(unary.max()) + sum(weights)
    ulp = 2.0 ** -23 * 2.0 ** math.floor(math.log2(largest_logit))
    bound = ulp * sum(gain ** step for step in range(config.iterations))
    for marginals in (dense_crf(unary, image, config),
                      dense_crf(unary.clone().requires_grad_(), image, config).detach()):
        assert (marginals.double() - in_place_64).abs().max() <= bound
        assert torch.allclose(marginals.sum(0), torch.ones(30, 40), atol=1e-5)


def test_dense_crf_with_weights_too_large_for_the_shift_free_softmax_still_agrees() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    generator = torch.Generator().manual_seed(7)
    image = np.ascontiguousarray((torch.rand(24, 32, 3, generator=generator) * 255).to(torch.uint8).numpy())
    unary = torch.rand(3, 24, 32, generator=generator) * 4
    config = DenseCRFConfig(bilateral_sxy=8.0, bilateral_compat=40.0, gaussian_compat=30.0, iterations=3)
    ours = dense_crf(unary, image, config).numpy()
    assert np.abs(ours - pydensecrf_marginals(unary, image, config)).max() < 1e-4


def test_dense_crf_refiner_gives_pydensecrfs_log_marginals_for_a_normalised_batch() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    from pixelseg.refiners.dense_crf import DenseCRFRefiner

    generator = torch.Generator().manual_seed(8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = (torch.rand(2, 3, 20, 28, generator=generator) * 255).round().to(torch.uint8)
    normalised = (images / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    logits = torch.randn(2, 4, 20, 28, generator=generator) * 2
    config = DenseCRFConfig(bilateral_sxy=15.0, iterations=3)
    refined = DenseCRFRefiner(mean, std, config)(normalised, logits)
    assert refined.shape == logits.shape
    for image, scores, ours in zip(images, logits, refined, strict=True):
        unary = unary_from_probabilities(scores.softmax(0))
        reference = pydensecrf_marginals(unary, np.ascontiguousarray(image.permute(1, 2, 0).numpy()), config)
        assert np.abs(ours.exp().numpy() - reference).max() < 1e-4
    with pytest.raises(ValueError, match="RGB"):
        DenseCRFRefiner()(normalised[:, :1], logits)
