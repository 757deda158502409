"""Test-time augmentation (inference/tta.py): multi-scale, flip and quarter-turn averaging of logits, in evaluate too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from sklearn.metrics import confusion_matrix
from torch import nn
from typer.testing import CliRunner

from pixelseg import create_model
from pixelseg.data.build import build_data, build_eval_dataset
from pixelseg.engine.config import Config, DataConfig, ModelConfig
from pixelseg.engine.train import build_model_for
from pixelseg.errors import PixelsegError
from pixelseg.inference.forward import forward_whole
from pixelseg.inference.tta import TestTimeAugmented, parse_scales, symmetry_logits, tta_logits


def small_net(num_classes: int = 3) -> nn.Module:
    """Not flip-equivariant (asymmetric random kernels), not scale-invariant."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1)).eval()


def test_one_scale_without_flip_is_the_plain_forward_pass() -> None:
    model = create_model("pspnet", num_classes=4, encoder="resnet18").eval()
    images = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(tta_logits(model, images), forward_whole(model, images))


def test_flip_averaging_makes_any_model_flip_equivariant() -> None:
    model = small_net()
    images = torch.randn(1, 3, 17, 23)
    with torch.no_grad():
        plain = tta_logits(model, images)
        assert not torch.allclose(tta_logits(model, images.flip(-1)), plain.flip(-1), atol=1e-3)
        averaged = tta_logits(model, images, scales=(0.75, 1.0), flip=True)
        mirrored = tta_logits(model, images.flip(-1), scales=(0.75, 1.0), flip=True)
    torch.testing.assert_close(mirrored, averaged.flip(-1))


def test_equals_the_average_computed_by_hand_with_torchvision_ops() -> None:
    model = small_net()
    images = torch.randn(2, 3, 20, 30)
    scales = (0.5, 1.0, 1.5)
    expected = []
    with torch.no_grad():
        for flip in (False, True):
            for scale in scales:
                view = TF.horizontal_flip(images) if flip else images
                view = TF.resize(view, [round(20 * scale), round(30 * scale)], antialias=False)
                logits = TF.resize(model(view), [20, 30], antialias=False)
                expected.append(TF.horizontal_flip(logits) if flip else logits)
        got = tta_logits(model, images, scales=scales, flip=True)
    torch.testing.assert_close(got, sum(expected) / len(expected))


def test_flip_and_rotate_average_the_eight_symmetries_of_the_square_as_numpy_turns_them() -> None:
    model = small_net()
    images = torch.randn(2, 3, 13, 19)  # not square: a quarter turn swaps height and width
    expected = []
    with torch.no_grad():
        for mirrored in (False, True):
            for turns in range(4):
                view = np.rot90(images.numpy()[..., ::-1] if mirrored else images.numpy(), turns, axes=(2, 3))
                logits = np.rot90(model(torch.from_numpy(view.copy())).numpy(), -turns, axes=(2, 3))
                expected.append(logits[..., ::-1] if mirrored else logits)
                (single,) = symmetry_logits(model, images, mirrored, turns)  # one view, turned back
                np.testing.assert_allclose(single.numpy(), expected[-1], rtol=1e-5, atol=1e-6)
        got = tta_logits(model, images, flip=True, rotate=True)
        turned_only = tta_logits(model, images, rotate=True)
    np.testing.assert_allclose(got.numpy(), np.mean(expected, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(turned_only.numpy(), np.mean(expected[:4], axis=0), rtol=1e-5, atol=1e-6)


def test_the_eight_symmetry_average_commutes_with_every_symmetry_for_a_valid_convolution_unet() -> None:
    model = create_model("unet", num_classes=2, in_channels=1, base_channels=4, depth=2).eval()
    images = torch.randn(1, 1, 30, 22)
    with torch.no_grad():
        averaged = tta_logits(model, images, flip=True, rotate=True)
        assert averaged.shape == (1, 2, 30, 22)
        for turns in range(4):
            for mirrored in (False, True):
                view = torch.rot90(images.flip(-1) if mirrored else images, turns, dims=(-2, -1))
                moved = torch.rot90(averaged.flip(-1) if mirrored else averaged, turns, dims=(-2, -1))
                torch.testing.assert_close(tta_logits(model, view, flip=True, rotate=True), moved)
        plain = tta_logits(model, images)
    assert not torch.allclose(plain, averaged, atol=1e-4)  # the network alone is not invariant


def test_valid_convolution_models_still_cover_the_whole_image_at_every_scale() -> None:
    model = create_model("unet", num_classes=2, in_channels=1, base_channels=4, depth=2).eval()
    images = torch.randn(1, 1, 27, 31)
    with torch.no_grad():
        logits = tta_logits(model, images, scales=(0.5, 1.25), flip=True)
    assert logits.shape == (1, 2, 27, 31)


def test_hmsa_composes_the_requested_scales_with_its_own_attention() -> None:
    model = create_model("hmsa", num_classes=3, trunk="unet", attention_channels=8, inference_scales=(1.0,),
                         trunk_kwargs={"padding": "same", "base_channels": 4, "depth": 2}).eval()
    images = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        got = tta_logits(model, images, scales=(0.5, 1.0, 2.0))
        expected = model.compose(images, (0.5, 1.0, 2.0))
        flipped = tta_logits(model, images, scales=(0.5, 1.0), flip=True)
        expected_flipped = (model.compose(images, (0.5, 1.0)) + model.compose(images.flip(-1), (0.5, 1.0)).flip(-1)) / 2
        averaged = TestTimeAugmented(model.trunk, (0.5, 1.0, 2.0))(images)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(flipped, expected_flipped)
    assert not torch.allclose(got, averaged, atol=1e-4)  # composition, not a plain average


@pytest.mark.parametrize("text, scales", [("0.75,1,1.25", (0.75, 1.0, 1.25)), ("0.5 1", (0.5, 1.0)),
                                          (" 1 ", (1.0,))])
def test_scales_parse_from_the_command_line(text: str, scales: tuple[float, ...]) -> None:
    assert parse_scales(text) == scales


@pytest.mark.parametrize("text", ["", "1,a", "0,1", "-0.5"])
def test_bad_scales_are_one_clear_error(text: str) -> None:
    with pytest.raises(PixelsegError, match="scales"):
        parse_scales(text)


def test_evaluate_command_scores_with_tta(tmp_path: Path) -> None:
    from pixelseg.cli import app

    config = Config(model=ModelConfig(name="unet", kwargs={"padding": "same", "base_channels": 4, "depth": 2}),
                    data=DataConfig(name="shapes", val_samples=3, image_size=24))
    info = build_data(config.data).info
    model = build_model_for(config, info).eval()
    model.save_pretrained(tmp_path / "model")
    report = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "model"), "--tta-scales", "0.5,1.5",
                                      "--tta-flip", "--tta-rotate", "--out", str(report)])
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())
    assert scores["tta"] == {"scales": [0.5, 1.5], "flip": True, "rotate": True}

    dataset = build_eval_dataset(config.data, info, "val")
    predicted, truth = [], []
    with torch.no_grad():
        for image, target in dataset:
            predicted.append(tta_logits(model, image[None], (0.5, 1.5), flip=True, rotate=True).argmax(1).flatten())
            truth.append(target.flatten())
    predicted, truth = torch.cat(predicted).numpy(), torch.cat(truth).numpy()
    matrix = confusion_matrix(truth, predicted, labels=list(range(info.num_classes))).astype(float)
    assert scores["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    plain = CliRunner().invoke(app, ["evaluate", str(tmp_path / "model"), "--out", str(report)])
    assert plain.exit_code == 0, plain.output
    assert json.loads(report.read_text())["tta"] == {"scales": [1.0], "flip": False, "rotate": False}


def test_evaluate_command_rejects_bad_scales_in_one_line(tmp_path: Path) -> None:
    from pixelseg.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--tta-scales", "0.5,x"])
    assert result.exit_code == 2
    assert "--tta-scales" in result.output and "Traceback" not in result.output
