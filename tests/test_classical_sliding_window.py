"""The sliding-window patch classifier and its fully convolutional form (identical outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixelseg.classical.sliding_window import PatchClassifier, sliding_window_predict, windows_at
from tests.helpers import losses_over_steps


def test_fully_convolutional_form_gives_the_sliding_window_output_at_every_pixel() -> None:
    classifier = PatchClassifier(3, window=9, conv_channels=(8, 16), hidden=32).eval()
    image = torch.randn(2, 3, 20, 23)
    per_pixel = sliding_window_predict(classifier, image, batch_size=300)
    one_pass = classifier.fully_convolutional()(image)
    assert one_pass.shape == (2, 3, 20, 23)
    assert torch.allclose(per_pixel, one_pass, atol=1e-5)


def test_default_patch_classifier_sees_a_15_pixel_window() -> None:
    classifier = PatchClassifier(11)
    assert classifier.window == 15
    assert classifier(torch.randn(4, 3, 15, 15)).shape == (4, 11)


def test_patch_classifier_trains_on_windows_of_labelled_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 24, 24, generator=generator)
    targets = (F.avg_pool2d(images[:, :1], 5, 1, 2)[:, 0] > 0).long()  # depends on a 5x5 neighbourhood
    classifier = PatchClassifier(2, window=7, conv_channels=(8,), hidden=32)
    optimiser = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        pixel = torch.randint(0, 2, (128,), generator=generator)
        rows, cols = torch.randint(0, 24, (2, 128), generator=generator)
        loss = F.cross_entropy(classifier(windows_at(images, 7, pixel, rows, cols)), targets[pixel, rows, cols])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_fully_convolutional_form_trains_on_whole_images() -> None:
    model = PatchClassifier(3, window=7, conv_channels=(8,), hidden=16).fully_convolutional()
    losses = losses_over_steps(model, in_channels=3, num_classes=3, size=(16, 16), steps=5)
    assert losses[-1] < losses[0]


def test_an_even_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="window must be odd"):
        PatchClassifier(2, window=8)
