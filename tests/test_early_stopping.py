"""Early stopping (issue 17: "trained until the validation pixel error stops improving"): train.monitor_mode,
train.early_stop_patience, its count across --resume, and the constant learning rate of Caffe's "fixed"."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pixelseg.engine import train as train_module
from pixelseg.engine.config import config_from_dict
from pixelseg.engine.train import learning_rate, monitor_mode, train
from pixelseg.errors import PixelsegError
from pixelseg.io.checkpoint import load_state_dict, read_metadata

torch.set_num_threads(1)

TINY_UNET = {"padding": "same", "base_channels": 4, "depth": 2, "batch_norm": True}


def tiny_config(tmp_path: Path, name: str = "run", **train_options) -> dict:
    """Shapes, 8 images of 32 px in batches of 4: 2 steps an epoch, a validation after each."""
    return {
        "model": {"name": "unet", "kwargs": dict(TINY_UNET)},
        "data": {"name": "shapes", "num_samples": 8, "val_samples": 2, "image_size": 32, "batch_size": 4,
                 "val_batch_size": 2},
        "optim": {"lr": 0.01},
        "train": {"epochs": 10, "threads": 1, "out_dir": str(tmp_path / name), **train_options},
    }


@pytest.fixture(autouse=True)
def no_curve_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """curves.png (matplotlib, a second a row) is not what these tests are about."""
    monkeypatch.setattr(train_module, "plot_curves", lambda *args, **kwargs: None)


def scripted(monkeypatch: pytest.MonkeyPatch, name: str, values: list[float]) -> list[int]:
    """Validation returns ``values`` in turn (then the last one again) as the score ``name``."""
    calls: list[int] = []

    def evaluate_model(*args, **kwargs):
        calls.append(1)
        return {name: values[min(len(calls), len(values)) - 1]}

    monkeypatch.setattr(train_module, "evaluate_model", evaluate_model)
    return calls


def log_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "log.csv").open()))


def state_info(run: Path) -> dict:
    return json.loads(read_metadata(run / "last.safetensors")["info"])


def test_patience_and_monitor_mode_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    for options, key in (({"early_stop_patience": 0}, "train.early_stop_patience"),
                         ({"monitor_mode": "maximum"}, "train.monitor_mode")):
        with pytest.raises(PixelsegError, match=key):
            config_from_dict(tiny_config(tmp_path, **options))
    assert monitor_mode("pixel_error", None) == "min" and monitor_mode("val_loss", None) == "min"
    assert monitor_mode("mean_iou", None) == "max" and monitor_mode("rand_error", "max") == "max"


def test_training_stops_after_patience_validations_without_a_better_score(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    scripted(monkeypatch, "mean_iou", [0.5, 0.4, 0.6, 0.6, 0.55, 0.9])  # 0.6 again is no improvement
    run = train(config_from_dict(tiny_config(tmp_path, early_stop_patience=2)), quiet=True)
    assert "stopped early after 10 steps of 20" in capsys.readouterr().err
    rows = log_rows(run)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]  # the 0.9 of a 6th validation never came
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["mean_iou"] == 0.6 and best["step"] == 6
    for name in ("best/model.safetensors", "last_model/model.safetensors", "last.safetensors"):
        assert (run / name).is_file(), name
    info = state_info(run)
    assert info["step"] == 10 and info["stale_validations"] == 2 and info["best"] == 0.6


def test_a_lower_is_better_monitor_keeps_the_lowest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, "pixel_error", [0.3, 0.2, 0.25, 0.1, 0.2, 0.3])
    config = tiny_config(tmp_path, monitor="pixel_error", early_stop_patience=2)  # min: from the name
    run = train(config_from_dict(config), quiet=True)
    assert [int(r["step"]) for r in log_rows(run)] == [2, 4, 6, 8, 10, 12]
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["pixel_error"] == 0.1 and best["step"] == 8
    scripted(monkeypatch, "pixel_error", [0.3, 0.2, 0.25, 0.1])
    forced = tiny_config(tmp_path, "forced", monitor="pixel_error", monitor_mode="max", early_stop_patience=1)
    run = train(config_from_dict(forced), quiet=True)  # an explicit mode wins over the name
    assert [int(r["step"]) for r in log_rows(run)] == [2, 4]
    assert json.loads((run / "best" / "metrics.json").read_text())["pixel_error"] == 0.3


def test_early_stopping_inside_an_epoch_at_val_every_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, "mean_iou", [0.5])
    config = tiny_config(tmp_path, val_every_steps=1, early_stop_patience=2)
    run = train(config_from_dict(config), quiet=True)
    assert [int(r["step"]) for r in log_rows(run)] == [1, 2, 3]  # stopped in the middle of epoch 2
    assert state_info(run)["step"] == 3 and (run / "last_model" / "model.safetensors").is_file()


def test_the_count_survives_resume_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, "mean_iou", [0.5])  # never better than the first validation
    straight = train(config_from_dict(tiny_config(tmp_path, "straight", early_stop_patience=3)), quiet=True)
    assert [int(r["step"]) for r in log_rows(straight)] == [2, 4, 6, 8]

    config = config_from_dict(tiny_config(tmp_path, "interrupted", early_stop_patience=3))
    real_loss, calls = train_module.compute_loss, {"n": 0}

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # the second step of epoch 3, after two validations (one without improvement)
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet=True)
    interrupted = Path(config.train.out_dir)
    assert state_info(interrupted)["stale_validations"] == 1
    monkeypatch.setattr(train_module, "compute_loss", real_loss)
    train(config, resume=True, quiet=True)
    # Had the count restarted at 0, the resumed run would have stopped at step 10.
    assert [int(r["step"]) for r in log_rows(interrupted)] == [2, 4, 6, 8]
    expected = load_state_dict(straight / "last_model" / "model.safetensors")
    resumed = load_state_dict(interrupted / "last_model" / "model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)

    # Resuming a run that stopped early trains no further; a larger patience continues it.
    train(config, resume=True, quiet=True)
    assert state_info(interrupted)["step"] == 8
    patient = config_from_dict(tiny_config(tmp_path, "interrupted", early_stop_patience=4))
    train(patient, resume=True, quiet=True)
    assert [int(r["step"]) for r in log_rows(interrupted)] == [2, 4, 6, 8, 10]


def test_resuming_with_another_monitor_judges_the_logged_validations_by_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # mean_iou peaks at the 1st validation; pixel_error (lower is better) keeps improving until the 3rd.
    scores = [{"mean_iou": 0.5, "pixel_error": 0.3}, {"mean_iou": 0.4, "pixel_error": 0.2},
              {"mean_iou": 0.45, "pixel_error": 0.1}, {"mean_iou": 0.3, "pixel_error": 0.15}]
    calls: list[int] = []

    def evaluate_model(*args, **kwargs):
        calls.append(1)
        return scores[min(len(calls), len(scores)) - 1]

    monkeypatch.setattr(train_module, "evaluate_model", evaluate_model)
    config = tiny_config(tmp_path, epochs=3, early_stop_patience=3)
    run = train(config_from_dict(config), quiet=True)
    info = state_info(run)
    assert (info["best"], info["stale_validations"], info["monitor"]) == (0.5, 2, "mean_iou")

    # Judged by mean_iou the run has 2 stale validations, one more would stop it; by pixel_error it has none.
    config["train"].update(epochs=4, monitor="pixel_error")
    train(config_from_dict(config), resume=True, quiet=True)
    assert "train.monitor pixel_error (min) replaces mean_iou (max): best 0.1 and 0 validations" \
        in capsys.readouterr().err
    info = state_info(run)
    assert (info["best"], info["stale_validations"], info["monitor"]) == (0.1, 1, "pixel_error")
    assert [int(r["step"]) for r in log_rows(run)] == [2, 4, 6, 8]
    # best/ keeps the mean_iou choice (step 2): the 4th validation did not better pixel_error's 0.1.
    assert json.loads((run / "best" / "metrics.json").read_text())["step"] == 2

    # An older checkpoint without the monitor in it: the figures decide, and the same monitor changes nothing.
    info.pop("monitor"), info.pop("monitor_mode")
    trainer = train_module.Trainer.__new__(train_module.Trainer)
    trainer.monitor, trainer.monitor_mode, trainer.best, trainer.stale_validations = "pixel_error", "min", 0.1, 1
    trainer.history, trainer.group = info["history"], type("Group", (), {"is_main": True})()
    trainer._judge_history_again_if_the_monitor_changed(info)
    assert (trainer.best, trainer.stale_validations) == (0.1, 1)
    assert "replaces" not in capsys.readouterr().err

    config["train"]["monitor"] = "rand_error"
    with pytest.raises(PixelsegError, match="train.monitor 'rand_error' was not logged"):
        train(config_from_dict(config), resume=True, quiet=True)


def test_constant_schedule_keeps_the_rate_after_its_warm_up(tmp_path: Path) -> None:
    values = tiny_config(tmp_path)
    values["optim"] = {"name": "sgd", "lr": 0.01, "momentum": 0.99, "schedule": "constant"}
    config = config_from_dict(values)
    assert [learning_rate(config, step, 100) for step in (0, 50, 99)] == [0.01, 0.01, 0.01]
    values["optim"]["warmup_steps"] = 4
    config = config_from_dict(values)
    assert [learning_rate(config, step, 100) for step in (0, 1, 3, 4, 99)] == pytest.approx(
        [0.0025, 0.005, 0.01, 0.01, 0.01])
