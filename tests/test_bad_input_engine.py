"""Bad input and faults through the engine and the CLI (issue 14): one line and exit 2 for what the user can
fix, one line and a saved traceback (exit 1) for a bug; config ranges; untrusted saved configs; NaN losses;
SIGTERM; the umask; the time budget; bit-exact resume after SIGKILL; identical metrics for the same seed."""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import pixelseg
from pixelseg import cli
from pixelseg.engine import train as train_module
from pixelseg.engine.config import load_config
from pixelseg.engine.train import train
from pixelseg.errors import PixelsegError
from pixelseg.io.checkpoint import atomic_write_bytes, load_state_dict, read_metadata
from pixelseg.models.pretrained import save_pretrained
from tests.test_engine import TINY  # the same tiny U-Net run

TINY_VOLUME = {
    "model": {"name": "vnet", "kwargs": {"channels": [4, 8, 16], "down_convs": [1, 2, 2], "up_convs": [2, 1]}},
    "data": {"name": "synthetic_volumes", "num_samples": 6, "val_samples": 1, "image_size": 16,
             "patch_size": [16, 16, 16], "batch_size": 2, "dflip": True},
    "loss": [{"name": "vnet_dice"}],
    "optim": {"lr": 3e-3},
    "train": {"epochs": 2, "threads": 1},
}
TINY_INSTANCE = {
    "task": "instance",
    "model": {"name": "mask_rcnn", "kwargs": {
        "backbone": "mobilenet_v3_large", "width_mult": 0.35, "fpn_channels": 16, "representation_size": 32,
        "mask_head_channels": 8, "min_size": 64, "max_size": 64, "anchor_sizes": [8, 16, 32, 64, 128],
        "rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32}},
    "data": {"name": "synthetic_instances", "num_samples": 6, "val_samples": 2, "image_size": 64, "batch_size": 2},
    "loss": [],
    "optim": {"name": "adamw", "lr": 1e-3, "schedule": "step", "warmup_steps": 1, "grad_clip": 10.0},
    "train": {"steps": 5, "val_every_steps": 100, "checkpoint_every_steps": 1, "threads": 1,
              "precise_bn_batches": 1},
}


def write_config(tmp_path: Path, name: str = "run", base: dict | None = None, **sections) -> Path:
    values = json.loads(json.dumps(base or TINY))
    values["train"]["out_dir"] = str(tmp_path / name)
    for key, value in sections.items():
        values[key] = {**values.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run_cli(*args: object):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def assert_one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("trained")
    return train(load_config(write_config(tmp_path, train={"epochs": 1})), quiet=True)


# ---- the error boundary ----------------------------------------------------------------------------------

def test_boundary_turns_a_pixelseg_error_into_one_line_and_exit_2(tmp_path: Path) -> None:
    line = assert_one_line(run_cli("train", tmp_path / "nowhere.yaml"), 2)
    assert line.startswith("error:") and "nowhere.yaml" in line and "config file not found" in line


def test_boundary_turns_os_errors_into_one_line_and_exit_2(tmp_path: Path, trained_run: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder")
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    line = assert_one_line(run_cli("predict", image, "--model", trained_run, "--out", occupied), 2)
    assert line.startswith("error:") and "occupied" in line

    def read_only(src, dst):  # what a read-only file system answers (root ignores chmod, so simulate it)
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    result = run_cli("evaluate", trained_run, "--out", tmp_path / "scores.json")  # scores printed, then the error
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Read-only file system" in errors[0] and "scores.json" in errors[0]
    assert errors[0] == result.output.strip().splitlines()[-1]


def test_boundary_reports_a_builder_value_error_as_bad_input(tmp_path: Path) -> None:
    config = write_config(tmp_path, model={"kwargs": {**TINY["model"]["kwargs"], "padding": "bogus"}})
    line = assert_one_line(run_cli("train", config), 2)
    assert "model 'unet'" in line and "bogus" in line
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind
    config = write_config(tmp_path, "twice", model={"kwargs": {"num_classes": 3}})
    assert "model.kwargs.num_classes" in assert_one_line(run_cli("train", config), 2)


def test_boundary_reports_a_model_that_does_not_fit_the_data_at_the_first_step(tmp_path: Path) -> None:
    config = write_config(tmp_path, model={"in_channels": 1})
    line = assert_one_line(run_cli("train", config, "--quiet"), 2)
    assert "cannot take the data's batches" in line and "in_channels" in line
    assert not (tmp_path / "run").exists()  # the first step failed: what the run created is gone


def test_boundary_reports_a_bug_with_a_saved_traceback_and_exit_1(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def planted_bug(config):
        return {}["no such key"]

    monkeypatch.setattr(train_module, "build_data", planted_bug)
    line = assert_one_line(run_cli("train", write_config(tmp_path)), 1)
    assert "KeyError" in line and "traceback saved to" in line
    log = Path(line.split("traceback saved to ")[1].split(" (please")[0])
    assert log.is_file() and "planted_bug" in log.read_text() and "Traceback" in log.read_text()
    log.unlink()


def test_boundary_keeps_the_interrupt_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def ctrl_c(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "build_data", ctrl_c)
    assert "interrupted" in assert_one_line(run_cli("train", write_config(tmp_path)), 2)


def test_threads_overlap_and_split_options_are_checked(tmp_path: Path, trained_run: Path) -> None:
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    out = tmp_path / "out"
    assert "--threads" in assert_one_line(
        run_cli("predict", image, "--model", trained_run, "--out", out, "--threads", "-1"), 2)
    assert "--overlap" in assert_one_line(
        run_cli("predict", image, "--model", trained_run, "--out", out, "--tile", "32", "--overlap", "32"), 2)
    assert "nosuchsplit" in assert_one_line(run_cli("evaluate", trained_run, "--split", "nosuchsplit"), 2)
    assert "train.threads" in assert_one_line(run_cli("train", write_config(tmp_path), "--set",
                                                      "train.threads=-1"), 2)


# ---- config ranges -------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("train.epochs=-3", "train.epochs"), ("train.epochs=0", "train.epochs"), ("train.steps=0", "train.steps"),
    ("optim.lr=-0.01", "optim.lr"), ("optim.lr=0", "optim.lr"), ("optim.lr=.nan", "optim.lr"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.momentum=1", "optim.momentum"),
    ("optim.momentum=-0.1", "optim.momentum"), ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("optim.grad_clip=0", "optim.grad_clip"), ("optim.poly_power=0", "optim.poly_power"),
    ("train.val_every=0", "train.val_every"), ("train.val_every_steps=0", "train.val_every_steps"),
    ("train.checkpoint_every_steps=0", "train.checkpoint_every_steps"), ("train.threads=0", "train.threads"),
    ("train.log_every=0", "train.log_every"), ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch"),
    ("train.max_minutes=0", "train.max_minutes"), ("train.max_minutes=-5", "train.max_minutes"),
    ("train.seed=-1", "train.seed"), ("train.device=gpu0", "train.device"),
    ("optim.name=adam", "optim.name"), ("optim.schedule=cosine", "optim.schedule"),
    ("loss=[{name: cross_entropy, weight: -1}]", "weight"), ("loss=[{name: dicee}]", "loss name"),
    ("model.in_channels=0", "model.in_channels"), ("model.name=''", "model.name"),
])
def test_out_of_range_config_values_are_refused_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    path = write_config(tmp_path)
    load_config(path)  # the config itself is fine
    with pytest.raises(PixelsegError) as caught:
        load_config(path, [override])
    message = str(caught.value)
    assert key in message and "\n" not in message and str(path) in message


def test_a_config_without_data_does_not_train_on_the_built_in_set(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "data"}))
    for path in (empty, no_data):
        line = assert_one_line(run_cli("train", path), 2)
        assert "names no dataset" in line and "data: {name: shapes}" in line
    named = write_config(tmp_path, data={"name": "shapes"})
    assert load_config(named).data.name == "shapes"


# ---- saved models: config.json is not trusted ----------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("name", 3), ("num_classes", "4"), ("num_classes", 0), ("num_classes", True), ("in_channels", -1),
    ("kwargs", "padding=same"), ("data", [1, 2]), ("encoder", 5), ("refine", "crf"),
])
def test_saved_config_types_are_checked_naming_file_and_key(tmp_path: Path, trained_run: Path, key: str,
                                                            value: object) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(trained_run / "best", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config[key] = value
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(PixelsegError) as caught:
        pixelseg.from_pretrained(model_dir)
    assert "config.json" in str(caught.value) and f"'{key}'" in str(caught.value)
    line = assert_one_line(run_cli("evaluate", model_dir), 2)
    assert "config.json" in line


def test_unknown_saved_data_field_is_one_line(tmp_path: Path, trained_run: Path) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(trained_run / "best", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["data"]["dataset"]["bogus_field"] = 1
    (model_dir / "config.json").write_text(json.dumps(config))
    line = assert_one_line(run_cli("evaluate", model_dir), 2)
    assert "config.json" in line and "bogus_field" in line


def test_loading_never_opens_a_file_that_config_json_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = pixelseg.create_model("mask_rcnn", num_classes=3, **TINY_INSTANCE["model"]["kwargs"])
    model_dir = save_pretrained(model, tmp_path / "model")
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(b"\x80\x04 a pickle, not weights")
    config = json.loads((model_dir / "config.json").read_text())
    config["kwargs"]["backbone_weights"] = str(planted)
    (model_dir / "config.json").write_text(json.dumps(config))

    opened: list[str] = []
    real_open, real_read_bytes, real_torch_load = open, Path.read_bytes, torch.load

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_read_bytes(self):
        opened.append(str(self))
        return real_read_bytes(self)

    def spy_torch_load(file, *args, **kwargs):
        opened.append(str(file))
        return real_torch_load(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    monkeypatch.setattr(Path, "read_bytes", spy_read_bytes)
    monkeypatch.setattr(torch, "load", spy_torch_load)
    loaded = pixelseg.from_pretrained(model_dir)
    assert str(planted) not in opened
    assert "backbone_weights" not in loaded.pixelseg_config["kwargs"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_weights_of_another_width_are_one_line(tmp_path: Path, trained_run: Path) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(trained_run / "best", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["kwargs"]["base_channels"] = 8
    (model_dir / "config.json").write_text(json.dumps(config))
    line = assert_one_line(run_cli("evaluate", model_dir), 2)
    assert "weights do not fit" in line and "model.safetensors" in line


# ---- training faults -----------------------------------------------------------------------------------

def test_nan_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_config(tmp_path, train={"checkpoint_every_steps": 1}))
    real, calls = train_module.compute_loss, {"n": 0}

    def nan_at_step_2(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == 2:
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(train_module, "compute_loss", nan_at_step_2)
    with pytest.raises(PixelsegError) as caught:
        train(config, quiet=True)
    message = str(caught.value)
    assert "\n" not in message and "nan at step 2" in message and "loss parts" in message
    assert "cannot name this batch's files" in message  # Shapes images are drawn, not read
    assert "last good checkpoint" in message
    state = Path(config.train.out_dir) / "last.safetensors"
    assert json.loads(read_metadata(state)["info"])["step"] == 1

    monkeypatch.setattr(train_module, "compute_loss", real)
    run = train(config, resume=True, quiet=True)  # the kept checkpoint continues
    assert [int(r["step"]) for r in csv.DictReader((run / "log.csv").open())] == [2, 4]


def test_batch_files_are_named_when_the_data_can_name_them() -> None:
    from torch.utils.data import Subset

    from pixelseg.data.instances import SyntheticInstances

    names = train_module.item_names(Subset(SyntheticInstances(10, size=32), [4, 7]), [1, 0])
    assert names == ["synthetic_000007.png", "synthetic_000004.png"]
    assert train_module.item_names(torch.utils.data.TensorDataset(torch.zeros(3)), [0]) is None


def test_run_outputs_respect_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        run = train(load_config(write_config(tmp_path, train={"epochs": 1})), quiet=True)
    finally:
        os.umask(previous)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    for name in ("last.safetensors", "log.csv", "config.yaml", "best/model.safetensors", "best/config.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


def test_time_budget_stops_cleanly_and_resume_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    config = load_config(write_config(tmp_path, train={"epochs": 4, "max_minutes": 1.0}))
    real, calls = train_module.compute_loss, {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", counting)
    monkeypatch.setattr(train_module, "clock", lambda: 0.0 if calls["n"] < 2 else 3600.0)  # spent after 2 steps
    run = train(config, quiet=True)
    assert "stopped at the time budget" in capsys.readouterr().err
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [2] and "val_mean_iou" in rows[0]
    for name in ("best/model.safetensors", "last_model/model.safetensors", "last.safetensors"):
        assert (run / name).is_file(), name
    assert json.loads(read_metadata(run / "last.safetensors")["info"])["step"] == 2
    monkeypatch.setattr(train_module, "clock", lambda: 0.0)
    train(config, resume=True, quiet=True)
    assert [int(r["step"]) for r in csv.DictReader((run / "log.csv").open())] == [2, 4, 6, 8]


def test_same_seed_and_config_give_identical_metrics(tmp_path: Path) -> None:
    rows = []
    for name in ("first", "second"):
        run = train(load_config(write_config(tmp_path, name)), quiet=True)
        rows.append([{k: v for k, v in row.items() if k != "seconds"}
                     for row in csv.DictReader((run / "log.csv").open())])
    assert rows[0] == rows[1] and len(rows[0]) == 2


def wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_checkpoints_and_exits_2_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, train={"epochs": 5, "checkpoint_every_steps": 1})
    pixelseg_command = [sys.executable, "-c", "from pixelseg.cli import main; main()"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*pixelseg_command, "train", str(config), "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    state = tmp_path / "run" / "last.safetensors"
    assert wait_for(state.exists, 120), "no checkpoint was written"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    lines = (stdout + stderr).strip().splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and "--resume" in lines[0], stdout + stderr
    stopped_at = json.loads(read_metadata(state)["info"])["step"]
    assert stopped_at < 10
    finished = subprocess.run([*pixelseg_command, "train", str(config), "--quiet", "--resume"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(read_metadata(state)["info"])["step"] == 10


# ---- SIGKILL at random moments, then --resume: the same weights as an uninterrupted run ----------------

def _train_in_child(config_path: str, resume: bool) -> None:
    torch.set_num_threads(1)
    train(load_config(config_path), resume=resume, quiet=True)


def _train_with_kills(config_path: Path, out_dir: Path, rng: random.Random, kills_wanted: int = 3) -> int:
    """Train and SIGKILL the training at random moments — each after it has written one more checkpoint, then a
    random fraction of a step later (inside a step, or while the next checkpoint is being written) — resuming
    from the last checkpoint each time, then let it finish; the number of kills that landed."""
    context = multiprocessing.get_context("fork")
    state = out_dir / "last.safetensors"
    kills = 0
    while True:
        resume = state.exists()
        written_before = state.stat().st_mtime_ns if resume else None
        child = context.Process(target=_train_in_child, args=(str(config_path), resume))
        child.start()
        if kills == kills_wanted:
            child.join(300)
            assert child.exitcode == 0, f"the last run failed (exit {child.exitcode})"
            return kills
        deadline = time.monotonic() + 120
        while child.is_alive() and time.monotonic() < deadline and (
                not state.exists() or state.stat().st_mtime_ns == written_before):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.15))
        if not child.is_alive():  # finished before the kill: nothing left to interrupt
            child.join()
            assert child.exitcode == 0
            return kills
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        kills += 1


@pytest.mark.parametrize("base", [TINY, TINY_VOLUME, TINY_INSTANCE], ids=["semantic", "volumetric", "instance"])
def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path: Path, base: dict) -> None:
    seed = int(os.environ.get("PIXELSEG_KILL_SEED", random.randrange(10**6)))
    sections = {"train": {"steps": 8}} if base is TINY_INSTANCE else {"train": {"epochs": 3, "checkpoint_every_steps": 1}}
    straight = train(load_config(write_config(tmp_path, "straight", base, **sections)), quiet=True)
    killed_config = write_config(tmp_path, "killed", base, **sections)
    kills = _train_with_kills(killed_config, tmp_path / "killed", random.Random(seed))
    assert kills >= 1, f"training ended before the first kill (PIXELSEG_KILL_SEED={seed}): make the run longer"
    expected = load_state_dict(straight / "last_model" / "model.safetensors")
    got = load_state_dict(tmp_path / "killed" / "last_model" / "model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0,
                                   msg=f"{key} differs (PIXELSEG_KILL_SEED={seed}, {kills} kills)")


def test_predict_reports_an_input_pillow_refuses_and_writes_the_others(tmp_path: Path, trained_run: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from pixelseg.engine.predict import predict

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("bomb.png", "good.png"):
        Image.new("RGB", (16, 16)).save(inputs / name)
    real_open = Image.open

    def refusing_open(file, *args, **kwargs):
        if "bomb" in str(file):
            raise Image.DecompressionBombError("Image size (900000000 pixels) exceeds limit")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refusing_open)
    report = predict(trained_run, inputs, tmp_path / "out")
    assert len(report.failed) == 1 and "bomb.png" in report.failed[0] and "\n" not in report.failed[0]
    assert (tmp_path / "out" / "good.png").is_file()
