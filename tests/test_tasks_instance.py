"""Instance segmentation through the one engine: config, trainer, checkpoints, resume, evaluate, predict."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import TINY_MASK_RCNN, run_cli, write_config
from PIL import Image

from pixelseg.engine.config import load_config
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.predict import predict
from pixelseg.engine.train import step_lr, train
from pixelseg.errors import PixelsegError
from pixelseg.io.checkpoint import load_state_dict

TINY_CONFIG = {
    "task": "instance",
    "model": {"name": "mask_rcnn", "kwargs": TINY_MASK_RCNN},
    "data": {"name": "synthetic_instances", "num_samples": 8, "val_samples": 3, "image_size": 64, "batch_size": 2},
    "loss": [],
    "optim": {"name": "adamw", "lr": 1e-3, "schedule": "step", "warmup_steps": 1, "grad_clip": 10.0},
    "train": {"steps": 2, "val_every_steps": 100, "checkpoint_every_steps": 1, "threads": 1,
              "precise_bn_batches": 2},
}
# The same run in the pixelseg 0.1 instance layout, which is still read (deprecated).
LEGACY_CONFIG = {
    "task": "instance",
    "model": TINY_MASK_RCNN,
    "data": {"kind": "synthetic", "train": {"length": 8, "size": 64}, "val": {"length": 3, "size": 64}},
    "train": {"steps": 2, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_steps": 1,
              "log_every": 1, "eval_every": 100, "checkpoint_every": 1, "threads": 1, "precise_bn_batches": 2},
}


def test_instance_config_trains_with_the_one_trainer_and_resumes(tmp_path: Path):
    config = write_config(tmp_path, TINY_CONFIG, "instance")
    run_cli("train", config)
    run = tmp_path / "instance"
    for name in ("config.yaml", "log.csv", "curves.png", "last.safetensors", "best/config.json",
                 "best/model.safetensors", "best/metrics.json", "last_model/config.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [2] and 0.0 <= float(rows[-1]["val_mask_AP50"]) <= 1.0
    assert "loss_mask" in rows[0]  # the detector's loss parts are logged
    train(load_config(config, ["train.steps=3"]), resume=True, quiet=True)  # continues at step 3
    assert [int(r["step"]) for r in csv.DictReader((run / "log.csv").open())] == [2, 3]
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["task"] == "instance" and saved["name"] == "mask_rcnn"

    scores = evaluate(run)
    assert {"mask_AP", "mask_AP50", "mask_AP75", "box_AP"} <= set(scores) and scores["task"] == "instance"
    printed = run_cli("evaluate", run, "--out", tmp_path / "metrics.json")
    assert "mask_AP50" in printed
    assert json.loads((tmp_path / "metrics.json").read_text())["mask_AP"] == scores["mask_AP"]

    Image.new("RGB", (64, 64), (30, 60, 90)).save(tmp_path / "x.png")
    report = predict(run, tmp_path / "x.png", tmp_path / "pred", score_threshold=0.0)
    assert (tmp_path / "pred" / "x_instances.png").is_file() and not report.failed
    assert isinstance(json.loads((tmp_path / "pred" / "predictions.json").read_text()), list)
    printed = run_cli("predict", tmp_path / "x.png", "--model", run, "--out", tmp_path / "pred_main",
                      "--score-threshold", "0.9")
    assert "x.png:" in printed and (tmp_path / "pred_main" / "images.json").is_file()


def test_instance_resume_inside_an_epoch_is_bit_exact_with_flips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pixelseg.engine import train as train_module

    six_images = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "num_samples": 6}}  # 3 steps an epoch
    straight = train(load_config(write_config(tmp_path, six_images, name="straight"), ["train.steps=4"]),
                     quiet=True)
    config = load_config(write_config(tmp_path, six_images, name="interrupted"), ["train.steps=4"])
    assert config.data.hflip  # the random flips must be replayed exactly too
    real, calls = train_module.compute_loss, {"n": 0}

    def crash_at_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # inside the first epoch, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", crash_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet=True)
    monkeypatch.setattr(train_module, "compute_loss", real)
    resumed = train(config, resume=True, quiet=True)
    expected = load_state_dict(straight / "last_model" / "model.safetensors")
    got = load_state_dict(resumed / "last_model" / "model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_legacy_instance_config_is_read_as_the_shared_sections(tmp_path: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = load_config(write_config(tmp_path, LEGACY_CONFIG, name="legacy"))
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    current = load_config(write_config(tmp_path, TINY_CONFIG, name="legacy"))
    assert legacy.model == current.model and legacy.optim == current.optim
    assert (legacy.data.name, legacy.data.num_samples, legacy.data.val_samples, legacy.data.image_size,
            legacy.data.batch_size) == ("synthetic_instances", 8, 3, 64, 2)
    assert (legacy.train.steps, legacy.train.val_every_steps, legacy.train.checkpoint_every_steps) == (2, 100, 1)
    with pytest.raises(PixelsegError, match="unknown train key 'lrr' \\(did you mean 'lr'\\?\\)"):
        load_config(write_config(tmp_path, {**LEGACY_CONFIG, "train": {"lrr": 0.5}}, name="bad"))
    with pytest.raises(PixelsegError, match="unknown data.kind 'pascal'"):
        load_config(write_config(tmp_path, {**LEGACY_CONFIG, "data": {"kind": "pascal"}}, name="bad"))


def test_config_overrides_and_bad_configs(tmp_path: Path):
    config = write_config(tmp_path, TINY_CONFIG, "instance")
    loaded = load_config(config, ["optim.lr=0.5", "model.kwargs.fpn_channels=32"])
    assert loaded.optim.lr == 0.5 and loaded.model.kwargs["fpn_channels"] == 32 and loaded.task == "instance"
    with pytest.raises(PixelsegError, match="unknown config key 'optim.lrr' \\(did you mean 'optim.lr'\\?\\)"):
        load_config(config, ["optim.lrr=0.5"])
    with pytest.raises(PixelsegError, match="fpn_channel"):
        train(load_config(config, ["model.kwargs.fpn_channel=8"]), quiet=True)
    with pytest.raises(PixelsegError, match="--set expects key=value"):
        load_config(config, ["optim.lr"])
    with pytest.raises(PixelsegError, match="task is 'semantic' but data.name 'synthetic_instances' is a "
                                           "instance dataset"):
        load_config(config, ["task=semantic"])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(PixelsegError, match="nothing to resume"):
        train(load_config(write_config(fresh, TINY_CONFIG, "instance")), resume=True)


def test_step_schedule_warms_up_then_steps_down_twice():
    assert step_lr(0.02, 0, 1000, 100) == pytest.approx(0.02 * 0.001)
    assert step_lr(0.02, 100, 1000, 100) == pytest.approx(0.02)
    assert step_lr(0.02, 750, 1000, 100) == pytest.approx(0.002)
    assert step_lr(0.02, 900, 1000, 100) == pytest.approx(0.0002)


def test_deprecated_instance_commands_report_bad_input_in_one_line(tmp_path: Path):
    from typer.testing import CliRunner

    from pixelseg import cli

    result = CliRunner().invoke(cli.app, ["instance-evaluate", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "no such model folder" in result.output


def make_penn_fudan_folder(root: Path, count: int) -> None:
    """``count`` tiny images in the Penn-Fudan layout (the first one from test_data_instances)."""
    import shutil

    from tests.test_data_instances import make_penn_fudan

    make_penn_fudan(root)
    for index in range(2, count + 1):
        for folder, suffix in (("PNGImages", ""), ("PedMasks", "_mask")):
            shutil.copy(root / folder / f"FudanPed00001{suffix}.png", root / folder / f"FudanPed{index:05d}{suffix}.png")


PENN_FUDAN_CONFIG = Path(__file__).parents[1] / "configs" / "instance" / "pennfudan_resnet50.yaml"


def test_shipped_penn_fudan_config_splits_one_folder_into_train_and_val(tmp_path: Path):
    from pixelseg.data.build import build_data

    root = tmp_path / "PennFudanPed"
    make_penn_fudan_folder(root, 53)
    data = build_data(load_config(PENN_FUDAN_CONFIG, [f"data.root={root}"]).data)
    assert len(data.train) == 3 and len(data.val) == 50  # the last 50 in name order are held out
    assert data.info.classes == ["background", "pedestrian"]
    assert data.train[0][1]["labels"].tolist() == [1, 1]
    with pytest.raises(PixelsegError, match="val_count must lie between 1 and 52"):
        build_data(load_config(PENN_FUDAN_CONFIG, [f"data.root={root}", "data.val_count=60"]).data)


def test_penn_fudan_run_is_one_command(tmp_path: Path):
    # The documented command with the shipped config (ResNet-50-FPN), shrunk only in size and steps.
    root = tmp_path / "PennFudanPed"
    make_penn_fudan_folder(root, 3)
    run = tmp_path / "run"
    shrink = {"min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20,
              "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 16,
              "box_detections_per_img": 5}
    run_cli("train", PENN_FUDAN_CONFIG, "--set", f"data.root={root}", "--set", "data.val_count=1",
            *[arg for key, value in shrink.items() for arg in ("--set", f"model.kwargs.{key}={value}")],
            "--set", "train.steps=1", "--set", "train.precise_bn_batches=1", "--set", "train.threads=1",
            "--set", f"train.out_dir={run}")
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert set(metrics) >= {"mask_AP", "mask_AP50", "box_AP"}
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["kwargs"]["backbone"] == "resnet50" and saved["data"]["classes"] == ["background", "pedestrian"]


def test_precise_batchnorm_sets_running_stats_to_the_average_of_batch_statistics():
    from pixelseg.data.instances import SyntheticInstances, collate_detection
    from pixelseg.models.registry import create_model
    from pixelseg.tasks.instance import recompute_batchnorm_statistics

    torch.set_num_threads(1)
    model = create_model("mask_rcnn", num_classes=4, **TINY_MASK_RCNN)
    norm = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_mean.fill_(5.0)
    dataset = SyntheticInstances(4, size=64)
    batches = [collate_detection([dataset[0], dataset[1]]), collate_detection([dataset[2], dataset[3]])]
    seen = []
    hook = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(dim=(0, 2, 3))))
    model.eval()
    recompute_batchnorm_statistics(model, iter(batches), 2)
    hook.remove()
    assert not model.training and norm.momentum == 0.01  # mode and momentum restored
    torch.testing.assert_close(norm.running_mean, (seen[0] + seen[1]) / 2)

