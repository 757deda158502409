"""Config, trainer (checkpoints, exact resume), evaluate, predict and the CLI (spine issue)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import pixelseg
from pixelseg import cli
from pixelseg.engine import train as train_module
from pixelseg.engine.config import load_config
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.predict import predict
from pixelseg.engine.train import poly_lr, train
from pixelseg.errors import PixelsegError
from pixelseg.io.checkpoint import atomic_write_bytes, load_state_dict

TINY = {
    "model": {"name": "unet", "kwargs": {"padding": "same", "base_channels": 4, "depth": 2, "batch_norm": True}},
    "data": {"name": "shapes", "num_samples": 8, "val_samples": 4, "image_size": 32, "batch_size": 4,
             "val_batch_size": 4},
    "optim": {"lr": 0.01},
    "train": {"epochs": 2, "threads": 1},
}


def write_config(tmp_path: Path, name: str = "run", **sections) -> Path:
    values = {key: dict(value) for key, value in TINY.items()}
    values["train"] = {**values["train"], "out_dir": str(tmp_path / name)}
    for key, value in sections.items():
        values[key] = {**values.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def one_line_error(call) -> str:
    with pytest.raises(PixelsegError) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_config_refuses_unknown_keys_and_bad_types_naming_the_closest(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert load_config(path, ["optim.lr=0.5", "data.hflip=false"]).optim.lr == 0.5
    message = one_line_error(lambda: load_config(path, ["optim.lrr=0.1"]))
    assert "optim.lrr" in message and "did you mean 'optim.lr'" in message and str(path) in message
    assert "did you mean 'train'" in one_line_error(lambda: load_config(path, ["trian.epochs=3"]))
    assert "must be int" in one_line_error(lambda: load_config(path, ["train.epochs=many"]))
    assert "key=value" in one_line_error(lambda: load_config(path, ["train.epochs"]))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    assert "not valid YAML" in one_line_error(lambda: load_config(broken))


def test_unknown_model_name_is_refused_with_the_closest(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path), ["model.name=unett"])
    assert "did you mean 'unet'" in one_line_error(lambda: train(config, quiet=True))


def test_poly_learning_rate() -> None:
    assert poly_lr(0.1, 0, 100, 0.9) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100, 0.9) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 100, 100, 0.9) == pytest.approx(0.0)
    assert poly_lr(0.1, 5, 100, 0.9, warmup_steps=10) < poly_lr(0.1, 10, 100, 0.9, warmup_steps=10)


def test_training_writes_checkpoints_log_and_curves_and_refuses_to_overwrite(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    run_dir = train(config, quiet=True)
    for name in ("config.yaml", "log.csv", "curves.png", "last.safetensors", "best/config.json",
                 "best/model.safetensors", "best/metrics.json"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_mean_iou" in rows[0]
    assert not [p for p in run_dir.rglob("*.tmp")]
    before = (run_dir / "last.safetensors").read_bytes()
    assert "--resume" in one_line_error(lambda: train(config, quiet=True))
    assert (run_dir / "last.safetensors").read_bytes() == before  # nothing lost
    model = pixelseg.from_pretrained(run_dir / "best")
    assert model.pixelseg_config["data"]["classes"] == ["background", "circle", "square", "triangle"]


def test_resume_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(load_config(write_config(tmp_path, "straight")), quiet=True)

    config = load_config(write_config(tmp_path, "interrupted"))
    real_loss, calls = train_module.compute_loss, {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 steps per epoch: the first step of epoch 2
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet=True)
    monkeypatch.setattr(train_module, "compute_loss", real_loss)
    interrupted = Path(config.train.out_dir)
    assert len(list(csv.DictReader((interrupted / "log.csv").open()))) == 1
    train(config, resume=True, quiet=True)

    expected = load_state_dict(straight / "last_model" / "model.safetensors")
    resumed = load_state_dict(interrupted / "last_model" / "model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    assert (interrupted / "log.csv").read_text() .count("\n") == (straight / "log.csv").read_text().count("\n")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, b"old")

    def power_cut(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_damaged_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00garbage")
    assert "model.safetensors" in one_line_error(lambda: load_state_dict(path))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("trained")
    return train(load_config(write_config(tmp_path)), quiet=True)


def test_evaluate_scores_the_validation_split_from_the_saved_model(trained_run: Path) -> None:
    scores = evaluate(trained_run, split="val")
    assert scores["images"] == 4 and scores["classes"][0] == "background"
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "frequency_weighted_iou", "mean_dice"):
        assert 0.0 <= scores[key] <= 1.0
    best = __import__("json").loads((trained_run / "best" / "metrics.json").read_text())
    assert scores["mean_iou"] == pytest.approx(best["mean_iou"])  # same data, same model, same metric


def test_predict_writes_index_pngs_and_overlays_and_reports_bad_files(trained_run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(2):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(
            inputs / f"im{index}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    report = predict(trained_run, inputs, out)
    assert len(report.failed) == 1 and "broken.png" in report.failed[0]
    assert sorted(p.name for p in out.iterdir()) == ["im0.png", "im0_overlay.png", "im1.png", "im1_overlay.png",
                                                     "keep.txt"]
    labels = Image.open(out / "im0.png")
    assert labels.mode == "P" and labels.size == (53, 37)
    assert set(np.unique(np.asarray(labels))) <= {0, 1, 2, 3}
    assert Image.open(out / "im0_overlay.png").size == (53, 37)


def run_cli(*args: str):
    return CliRunner().invoke(cli.app, list(args))


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, trained_run: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = run_cli("train", str(missing))
    assert result.exit_code == 2 and "config file not found" in result.output
    assert "Traceback" not in result.output

    config = write_config(tmp_path, "camvid_missing", data={"name": "camvid", "root": str(tmp_path / "no_camvid")})
    result = run_cli("train", str(config))
    assert result.exit_code == 2 and "no_camvid" in result.output and "directory not found" in result.output

    result = run_cli("train", str(write_config(tmp_path)), "--set", "optim.momentun=0.5")
    assert result.exit_code == 2 and "did you mean 'optim.momentum'" in result.output

    result = run_cli("evaluate", str(tmp_path))
    assert result.exit_code == 2 and "no saved model here" in result.output

    result = run_cli("predict", str(tmp_path / "no_images"), "--model", str(trained_run), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "no_images" in result.output
    for result in [run_cli("train", str(missing))]:
        assert len(result.output.strip().splitlines()) == 1


def test_cli_train_evaluate_predict_and_models(tmp_path: Path) -> None:
    config = write_config(tmp_path, "cli", train={"epochs": 1})
    result = run_cli("train", str(config), "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "cli"
    report = tmp_path / "scores.json"
    result = run_cli("evaluate", str(run_dir), "--out", str(report))
    assert result.exit_code == 0, result.output
    assert "mean_iou" in result.output and report.is_file()
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    result = run_cli("predict", str(image), "--model", str(run_dir), "--out", str(tmp_path / "pred"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "one.png").is_file() and (tmp_path / "pred" / "one_overlay.png").is_file()
    result = run_cli("models", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in __import__("json").loads(result.output)}
    assert rows["fcn8s"]["paper"] and rows["unet"]["parameters"].endswith("M")


def test_scheduled_losses_follow_the_epoch_across_resume(tmp_path: Path) -> None:
    loss = [{"name": "region_boundary", "params": {"alpha_start": 1.0, "alpha_step": 0.25, "alpha_min": 0.0}}]
    values = {**TINY, "loss": loss, "train": {**TINY["train"], "epochs": 1, "out_dir": str(tmp_path / "sched")}}
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(values))
    seen: list[float] = []
    from pixelseg.losses import RegionBoundaryLoss

    original = RegionBoundaryLoss.forward

    def record(self, logits, target):
        seen.append(self.alpha)
        return original(self, logits, target)

    RegionBoundaryLoss.forward = record
    try:
        train(load_config(path), quiet=True)
        train(load_config(path, ["train.epochs=3"]), resume=True, quiet=True)
    finally:
        RegionBoundaryLoss.forward = original
    assert seen == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5]  # 2 steps per epoch; epoch 2 starts after the resume


def test_class_weights_computed_from_the_training_split(tmp_path: Path) -> None:
    from pixelseg.data.build import dataset_stats
    from pixelseg.engine.train import loss_terms

    config = load_config(write_config(tmp_path), ["loss=[{name: cross_entropy, params: {class_weights: enet}}]"])
    expected = dataset_stats(config.data).enet_weights()
    np.testing.assert_allclose(loss_terms(config)[0]["class_weights"], expected)
    config = load_config(write_config(tmp_path), ["loss=[{name: cross_entropy, params: {class_weights: median}}]"])
    assert "did you mean 'median_frequency'" in one_line_error(lambda: loss_terms(config))


def test_evaluate_overrides_keys_of_the_saved_data_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    run_dir = train(load_config(write_config(tmp_path), ["train.epochs=1"]), quiet=True)
    assert evaluate(run_dir, split="test", data_overrides={"val_samples": 3})["images"] == 3
    result = CliRunner().invoke(cli.app, ["evaluate", str(run_dir), "--split", "test", "--set", "data.val_samples=2"])
    assert result.exit_code == 0 and "(2" in result.output and "images)" in result.output, result.output
    assert "did you mean 'data.val_samples'" in one_line_error(
        lambda: evaluate(run_dir, data_overrides={"val_sample": 2}))
    refused = CliRunner().invoke(cli.app, ["evaluate", str(run_dir), "--set", "optim.lr=2"])
    assert refused.exit_code == 2 and "data.KEY=VALUE" in refused.output
