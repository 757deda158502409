"""CRF-as-RNN (Zheng et al. 2015): equals dense-CRF mean field at Potts init, trains end to end."""

from __future__ import annotations

import torch
from torch import nn

from pixelseg.refiners.crf_as_rnn import CRFasRNN, WithCRFasRNN
from pixelseg.refiners.dense_crf import DenseCRFConfig, dense_crf


def test_crf_as_rnn_at_initialisation_is_dense_crf_mean_field() -> None:
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(20, 24, 3, generator=generator) * 255).to(torch.uint8)
    logits = torch.randn(1, 4, 20, 24, generator=generator) * 2
    layer = CRFasRNN(4, iterations=5, theta_alpha=10.0, theta_beta=20.0, theta_gamma=2.0,
                     appearance_weight=4.0, smoothness_weight=2.0)
    ours = layer(logits, image.permute(2, 0, 1)[None].float()).softmax(1)[0]
    config = DenseCRFConfig(gaussian_sxy=2.0, gaussian_compat=2.0, bilateral_sxy=10.0, bilateral_srgb=20.0,
                            bilateral_compat=4.0, iterations=5)
    reference = dense_crf(-logits[0], image, config)
    assert torch.allclose(ours, reference, atol=1e-5)


def small_network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))


def test_gradients_reach_the_network_and_the_crf_parameters_change_in_training() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 16, 20, generator=generator)
    targets = (images[:, 0] > 0).long() + (images[:, 1] > 1).long()
    # Unit kernel weights: with the paper's 5 and 3 the CRF is very confident on these noise images.
    model = WithCRFasRNN(small_network(), num_classes=3, theta_alpha=8.0, theta_beta=30.0,
                         appearance_weight=1.0, smoothness_weight=1.0)
    start = {name: value.detach().clone() for name, value in model.crf.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for step in range(8):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.parameters())
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.crf.parameters())
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, value in model.crf.named_parameters():
        assert not torch.allclose(value, start[name]), name


def test_crf_as_rnn_output_has_the_input_shape() -> None:
    layer = CRFasRNN(5, iterations=2)
    logits = torch.randn(3, 5, 9, 11)
    assert layer(logits, torch.rand(3, 3, 9, 11) * 255).shape == logits.shape


def test_crf_as_rnn_gradients_match_finite_differences() -> None:
    generator = torch.Generator().manual_seed(2)
    layer = CRFasRNN(3, iterations=3, theta_alpha=4.0, theta_beta=40.0).double()
    logits = torch.randn(1, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    image = torch.rand(1, 3, 4, 5, generator=generator, dtype=torch.float64) * 255
    names = ["appearance_weight", "smoothness_weight", "compatibility"]
    params = [getattr(layer, name).detach().clone().requires_grad_() for name in names]

    def run(logits: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, values, strict=True)), (logits, image))

    assert torch.autograd.gradcheck(run, (logits, *params))
