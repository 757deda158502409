"""The instance training loop: config handling, checkpoints, resume, saved model, evaluate/predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pixelseg.errors import PixelsegError
from pixelseg.instance.evaluate import evaluate_from_args
from pixelseg.instance.predict import predict_from_args
from pixelseg.instance.train import learning_rate, load_config, train_from_config

TINY_CONFIG = {
    "task": "instance",
    "model": {"backbone": "mobilenet_v3_large", "width_mult": 0.35, "fpn_channels": 16,
              "representation_size": 32, "mask_head_channels": 8, "min_size": 64, "max_size": 64,
              "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_top_n_train": 64,
              "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32},
    "data": {"kind": "synthetic", "train": {"length": 8, "size": 64}, "val": {"length": 3, "size": 64}},
    "train": {"steps": 2, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_steps": 1,
              "log_every": 1, "eval_every": 100, "checkpoint_every": 1, "threads": 1},
}


def write_config(tmp_path: Path, changes: dict | None = None) -> Path:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["train"]["out_dir"] = str(tmp_path / "run")
    for section, values in (changes or {}).items():
        config[section].update(values)
    path = tmp_path / "instance.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str) -> str:
    """``pixelseg ARGS`` through the main command line; fails the test on a non-zero exit."""
    from typer.testing import CliRunner

    from pixelseg import cli

    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_training_writes_checkpoints_metrics_and_a_model_and_resumes(tmp_path: Path):
    config = write_config(tmp_path)
    run_cli("train", config)  # the main command dispatches task: instance here
    run = tmp_path / "run"
    assert (run / "last.safetensors").is_file()
    assert sorted(p.name for p in (run / "model").iterdir()) == ["config.json", "model.safetensors",
                                                                 "train_config.yaml"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["step"] == 2 and 0.0 <= summary["final"]["mask_AP50"] <= 1.0
    steps_logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2]
    train_from_config(config, ["train.steps=3"], resume=True)  # continues at step 3, not from scratch
    steps_logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3]
    metrics = evaluate_from_args(run / "model")
    assert set(metrics) >= {"mask_AP", "mask_AP50", "mask_AP75", "box_AP"}
    assert json.loads((run / "model" / "metrics_val.json").read_text()) == metrics
    Image.new("RGB", (64, 64), (30, 60, 90)).save(tmp_path / "x.png")
    predict_from_args(run / "model", [tmp_path / "x.png"], tmp_path / "pred", score_threshold=0.0)
    assert (tmp_path / "pred" / "x_instances.png").is_file()
    assert isinstance(json.loads((tmp_path / "pred" / "predictions.json").read_text()), list)

    # the main commands recognise an instance model (or its run folder) and dispatch to the same code
    printed = run_cli("evaluate", run, "--out", tmp_path / "main_metrics.json")
    assert "mask_AP50" in printed
    assert json.loads((tmp_path / "main_metrics.json").read_text()) == metrics
    run_cli("predict", tmp_path / "x.png", "--model", run / "model", "--out", tmp_path / "pred_main")
    assert (tmp_path / "pred_main" / "x_instances.png").is_file()
    assert isinstance(json.loads((tmp_path / "pred_main" / "predictions.json").read_text()), list)


def test_config_overrides_and_bad_configs(tmp_path: Path):
    config = write_config(tmp_path)
    loaded = load_config(config, ["train.lr=0.5", "model.fpn_channels=32"])
    assert loaded["train"]["lr"] == 0.5 and loaded["model"]["fpn_channels"] == 32
    assert loaded["train"]["momentum"] == 0.9  # defaults fill what the file leaves out
    with pytest.raises(PixelsegError, match="unknown train key 'lrr' \\(did you mean 'lr'\\?\\)"):
        load_config(config, ["train.lrr=0.5"])
    with pytest.raises(PixelsegError, match="instance.yaml: model: unknown Mask R-CNN keyword 'fpn_channel' "
                                           "\\(did you mean 'fpn_channels'\\?\\)"):
        train_from_config(config, ["model.fpn_channel=8"], resume=False)
    with pytest.raises(PixelsegError, match="--set expects key=value"):
        load_config(config, ["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: semantic\n")
    with pytest.raises(PixelsegError, match="bad.yaml: task is 'semantic'"):
        load_config(bad, [])
    with pytest.raises(PixelsegError, match="unknown data.kind 'pascal'"):
        train_from_config(write_config(tmp_path, {"data": {"kind": "pascal"}}), [], resume=False)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(PixelsegError, match="no training state to resume from"):
        train_from_config(write_config(fresh), [], resume=True)


def test_learning_rate_warms_up_then_steps_down_twice():
    assert learning_rate(0, 0.02, 1000, 100) == pytest.approx(0.02 * 0.001)
    assert learning_rate(100, 0.02, 1000, 100) == pytest.approx(0.02)
    assert learning_rate(750, 0.02, 1000, 100) == pytest.approx(0.002)
    assert learning_rate(900, 0.02, 1000, 100) == pytest.approx(0.0002)


def test_cli_plugin_commands_report_bad_input_in_one_line(tmp_path: Path):
    from typer.testing import CliRunner

    from pixelseg import cli

    result = CliRunner().invoke(cli.app, ["instance-evaluate", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "no config given" in result.output or "no config given" in str(result.stderr_bytes or b"")


def make_penn_fudan_folder(root: Path, count: int) -> None:
    """``count`` tiny images in the Penn-Fudan layout (the first one from test_instance_data)."""
    import shutil

    from tests.test_instance_data import make_penn_fudan

    make_penn_fudan(root)
    for index in range(2, count + 1):
        for folder, suffix in (("PNGImages", ""), ("PedMasks", "_mask")):
            shutil.copy(root / folder / f"FudanPed00001{suffix}.png", root / folder / f"FudanPed{index:05d}{suffix}.png")


PENN_FUDAN_CONFIG = Path(__file__).parents[1] / "configs" / "instance" / "pennfudan_resnet50.yaml"


def test_shipped_penn_fudan_config_splits_one_folder_into_train_and_val(tmp_path: Path):
    from pixelseg.instance.train import build_dataset

    root = tmp_path / "PennFudanPed"
    make_penn_fudan_folder(root, 53)
    config = load_config(PENN_FUDAN_CONFIG, [f"data.root={root}"])
    train_set, val_set = build_dataset(config, "train"), build_dataset(config, "val")
    assert len(train_set) == 3 and len(val_set) == 50  # the last 50 in name order are held out
    assert {p[0].name for p in train_set.pairs} == {f"FudanPed{k:05d}.png" for k in (1, 2, 3)}
    assert train_set[0][1]["labels"].tolist() == [1, 1]
    with pytest.raises(PixelsegError, match="val_count must lie between 1 and 52"):
        build_dataset(load_config(PENN_FUDAN_CONFIG, [f"data.root={root}", "data.val.val_count=60"]), "val")


def test_penn_fudan_run_is_one_command(tmp_path: Path):
    # The documented command with the shipped config (ResNet-50-FPN), shrunk only in size and steps.
    root = tmp_path / "PennFudanPed"
    make_penn_fudan_folder(root, 3)
    run = tmp_path / "run"
    run_cli("train", PENN_FUDAN_CONFIG, "--set", f"data.root={root}", "--set", "data.train.val_count=1",
            "--set", "data.val.val_count=1", "--set", "model.min_size=64", "--set", "model.max_size=64",
            "--set", "model.rpn_pre_nms_top_n_train=50", "--set", "model.rpn_post_nms_top_n_train=20",
            "--set", "model.rpn_pre_nms_top_n_test=50", "--set", "model.rpn_post_nms_top_n_test=20",
            "--set", "model.box_batch_size_per_image=16", "--set", "model.box_detections_per_img=5",
            "--set", "train.steps=1", "--set", "train.precise_bn_batches=1", "--set", "train.threads=1",
            "--set", f"train.out_dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["final"]) >= {"mask_AP", "mask_AP50", "box_AP"}
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["kwargs"]["backbone"] == "resnet50" and saved["class_names"] == ["background", "pedestrian"]


def test_precise_batchnorm_sets_running_stats_to_the_average_of_batch_statistics():
    from pixelseg.data.instances import SyntheticInstances, collate_detection
    from pixelseg.models.mask_rcnn import build_mask_rcnn
    from pixelseg.instance.train import recompute_batchnorm_statistics

    torch.set_num_threads(1)
    model = build_mask_rcnn(4, **TINY_CONFIG["model"])
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
