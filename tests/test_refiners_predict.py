"""``pixelseg predict ... --refine crf``: any saved model's logits refined by the dense CRF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pixelseg.data.build import build_data
from pixelseg.data.transforms import normalize
from pixelseg.engine.config import Config, DataConfig, ModelConfig
from pixelseg.engine.train import build_model_for
from pixelseg.inference.forward import forward_whole
from pixelseg.refiners.dense_crf import DenseCRFConfig, unary_from_probabilities
from tests.test_refiners_dense_crf import pydensecrf_marginals


@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    config = Config(model=ModelConfig(name="unet", kwargs={"padding": "same", "base_channels": 4, "depth": 2}),
                    data=DataConfig(name="shapes", val_samples=3, image_size=24))
    model = build_model_for(config, build_data(config.data).info).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # noisy convolution kernels: a labelling that changes from pixel to pixel
        for parameter in model.parameters():
            if parameter.dim() == 4:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
        classifier = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)][-1]
        classifier.weight.mul_(0.05)  # ... and not confident about it
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    """Two flat colour halves with noise, 40x56."""
    rng = np.random.default_rng(0)
    pixels = np.where(np.arange(56)[None, :, None] < 28, [30, 60, 200], [200, 60, 30]) + rng.normal(0, 20, (40, 56, 3))
    path = tmp_path / "scene.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def test_refine_crf_agrees_with_pydensecrf_on_the_model_logits(saved_model: tuple[Path, torch.nn.Module],
                                                               image_file: Path, tmp_path: Path) -> None:
    from pixelseg.cli import app

    pytest.importorskip("pydensecrf.densecrf")
    model_dir, model = saved_model
    runner = CliRunner()
    plain = runner.invoke(app, ["predict", str(image_file), "--model", str(model_dir), "--out", str(tmp_path / "a")])
    refined = runner.invoke(app, ["predict", str(image_file), "--model", str(model_dir), "--out", str(tmp_path / "b"),
                                  "--refine", "crf"])
    assert plain.exit_code == 0 and refined.exit_code == 0, plain.output + refined.output
    plain_labels = np.array(Image.open(tmp_path / "a" / "scene.png"))
    refined_labels = np.array(Image.open(tmp_path / "b" / "scene.png"))

    image = np.array(Image.open(image_file).convert("RGB"))
    info = model.pixelseg_config["data"]
    pixels = normalize(torch.as_tensor(image).permute(2, 0, 1).float() / 255.0, info["mean"], info["std"])
    with torch.no_grad():
        logits = forward_whole(model, pixels[None])[0]
    assert (plain_labels == logits.argmax(0).numpy()).all()
    reference = pydensecrf_marginals(unary_from_probabilities(logits.softmax(0)), image, DenseCRFConfig()).argmax(0)
    assert (refined_labels == reference).mean() >= 0.99
    assert (refined_labels != plain_labels).mean() > 0.05  # the CRF did change the labels ...
    assert boundary_length(refined_labels) < 0.5 * boundary_length(plain_labels)  # ... and smoothed them


def boundary_length(labels: np.ndarray) -> int:
    """Number of 4-neighbour pairs with different labels."""
    return int((labels[1:] != labels[:-1]).sum() + (labels[:, 1:] != labels[:, :-1]).sum())


def test_an_unknown_refinement_is_one_clear_line(saved_model: tuple[Path, torch.nn.Module], image_file: Path,
                                                 tmp_path: Path) -> None:
    from pixelseg.cli import app

    result = CliRunner().invoke(app, ["predict", str(image_file), "--model", str(saved_model[0]),
                                      "--out", str(tmp_path / "o"), "--refine", "densecrf"])
    assert result.exit_code == 2
    assert "unknown refinement 'densecrf'; choose one of: crf" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def predict_labels(model_dir: Path, image_file: Path, out: Path, *options: str) -> np.ndarray:
    from pixelseg.cli import app

    result = CliRunner().invoke(app, ["predict", str(image_file), "--model", str(model_dir), "--out", str(out),
                                      *options])
    assert result.exit_code == 0, result.output
    return np.array(Image.open(out / "scene.png"))


def test_refine_crf_parameters_reach_the_dense_crf(saved_model: tuple[Path, torch.nn.Module], image_file: Path,
                                                   tmp_path: Path) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    model_dir, model = saved_model
    plain = predict_labels(model_dir, image_file, tmp_path / "plain")
    default = predict_labels(model_dir, image_file, tmp_path / "default", "--refine", "crf")
    # Without pairwise weights the CRF keeps the network's labels.
    unweighted = predict_labels(model_dir, image_file, tmp_path / "unweighted", "--refine", "crf",
                                "--crf-gaussian-compat", "0", "--crf-bilateral-compat", "0")
    assert (unweighted == plain).all() and (default != plain).mean() > 0.05
    # Other parameters: the labels of pydensecrf2 run with the same ones, not the default labels.
    config = DenseCRFConfig(gaussian_sxy=1.0, gaussian_compat=1.0, bilateral_sxy=6.0, bilateral_srgb=30.0,
                            bilateral_compat=2.0, iterations=2)
    tuned = predict_labels(model_dir, image_file, tmp_path / "tuned", "--refine", "crf",
                           "--crf-iterations", "2", "--crf-gaussian-sxy", "1", "--crf-gaussian-compat", "1",
                           "--crf-bilateral-sxy", "6", "--crf-bilateral-srgb", "30", "--crf-bilateral-compat", "2")
    image = np.array(Image.open(image_file).convert("RGB"))
    info = model.pixelseg_config["data"]
    pixels = normalize(torch.as_tensor(image).permute(2, 0, 1).float() / 255.0, info["mean"], info["std"])
    with torch.no_grad():
        logits = forward_whole(model, pixels[None])[0]
    reference = pydensecrf_marginals(unary_from_probabilities(logits.softmax(0)), image, config).argmax(0)
    assert (tuned == reference).mean() >= 0.99
    assert (tuned != default).mean() > 0.02


@pytest.mark.parametrize(("options", "message"), [
    (["--refine", "crf", "--crf-iterations", "0"], "dense CRF iterations must be a whole number >= 1, got 0"),
    (["--refine", "crf", "--crf-bilateral-compat", "-1"],
     "dense CRF bilateral_compat (a kernel weight, must be >= 0) is -1.0"),
    (["--refine", "crf", "--crf-gaussian-sxy", "0"], "dense CRF gaussian_sxy (a bandwidth, must be > 0) is 0.0"),
    (["--crf-iterations", "3"], "the dense CRF parameters (--crf-*) need --refine crf"),
])
def test_bad_refine_crf_parameters_are_one_clear_line(saved_model: tuple[Path, torch.nn.Module], image_file: Path,
                                                      tmp_path: Path, options: list[str], message: str) -> None:
    from pixelseg.cli import app

    result = CliRunner().invoke(app, ["predict", str(image_file), "--model", str(saved_model[0]),
                                      "--out", str(tmp_path / "o"), *options])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_a_refiner_saved_with_the_model_is_applied_by_predict_and_evaluate(tmp_path: Path, image_file: Path) -> None:
    """``model.refine: {name: crf, ...}`` travels in config.json; predict then refines without --refine, with
    the saved parameters, exactly as ``--refine crf`` with the same parameters does."""
    from pixelseg.cli import app
    from pixelseg.engine.evaluate import evaluate
    from pixelseg.models.pretrained import from_pretrained

    config = Config(model=ModelConfig(name="unet", kwargs={"padding": "same", "base_channels": 4, "depth": 2},
                                      refine={"name": "crf", "iterations": 2, "gaussian_compat": 0.0,
                                              "bilateral_compat": 0.5}),
                    data=DataConfig(name="shapes", val_samples=2, image_size=24))
    model = build_model_for(config, build_data(config.data).info).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a noisy, unconfident labelling, as in the fixture above
        for parameter in model.parameters():
            if parameter.dim() == 4:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
        classifier = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)][-1]
        classifier.weight.mul_(0.05)
    model.save_pretrained(tmp_path / "crf_model")
    assert from_pretrained(tmp_path / "crf_model").pixelseg_config["refine"]["iterations"] == 2
    runner = CliRunner()
    saved = runner.invoke(app, ["predict", str(image_file), "--model", str(tmp_path / "crf_model"),
                                "--out", str(tmp_path / "saved")])
    explicit = runner.invoke(app, ["predict", str(image_file), "--model", str(tmp_path / "crf_model"),
                                   "--out", str(tmp_path / "explicit"), "--refine", "crf", "--crf-iterations", "2",
                                   "--crf-gaussian-compat", "0", "--crf-bilateral-compat", "0.5"])
    defaults = runner.invoke(app, ["predict", str(image_file), "--model", str(tmp_path / "crf_model"),
                                   "--out", str(tmp_path / "defaults"), "--refine", "crf"])
    assert saved.exit_code == explicit.exit_code == defaults.exit_code == 0, saved.output + explicit.output
    labels = {name: np.array(Image.open(tmp_path / name / "scene.png")) for name in ("saved", "explicit", "defaults")}
    assert (labels["saved"] == labels["explicit"]).all()
    assert not (labels["saved"] == labels["defaults"]).all()  # the saved parameters, not the defaults
    scores = evaluate(tmp_path / "crf_model")  # the saved CRF runs in evaluation too
    assert 0.0 <= scores["mean_iou"] <= 1.0


def test_a_bad_saved_refiner_is_one_line(tmp_path: Path) -> None:
    from pixelseg.errors import PixelsegError
    from pixelseg.tasks.semantic import saved_refiner

    model = torch.nn.Identity()
    model.pixelseg_config = {"refine": {"name": "crf", "iteration": 2}}
    with pytest.raises(PixelsegError, match="model.refine: .*iteration"):
        saved_refiner(model)
    model.pixelseg_config = {"refine": {"name": "crfasrnn"}}
    with pytest.raises(PixelsegError, match="model.refine must be a mapping with name one of crf"):
        saved_refiner(model)
