"""Property-based bad input for the config loader and the saved-model loader (issue 14).

Whatever a YAML experiment config or a saved model's ``config.json`` holds, loading it either works or ends
in one ``PixelsegError`` line naming the file or the key — never another exception. The strategies mix valid
keys with typos and every JSON/YAML value type, including negative, huge, NaN and nested values.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelseg.engine.config import load_config
from pixelseg.errors import PixelsegError
from pixelseg.models.pretrained import from_pretrained
from pixelseg.models.registry import create_model

SECTIONS = {
    "model": ["name", "in_channels", "encoder", "encoder_weights", "kwargs", "refine", "nmae"],
    "data": ["name", "root", "batch_size", "val_batch_size", "image_size", "num_samples", "val_samples",
             "crop_size", "patch_size", "scale_range", "classes", "palette", "ignore_index", "hflip", "repeats",
             "mean", "std", "val_count", "bach_size"],
    "optim": ["name", "lr", "weight_decay", "momentum", "schedule", "poly_power", "warmup_steps", "grad_clip", "lrr"],
    "train": ["epochs", "steps", "seed", "out_dir", "threads", "val_every", "val_every_steps", "monitor",
              "max_minutes", "checkpoint_every_steps", "epohcs"],
    "loss": None,
    "task": None,
    "trian": None,
}
NAMES = ["unet", "fcn8s", "vnet", "mask_rcnn", "shapes", "folder", "camvid", "synthetic_instances", "adamw", "sgd",
         "poly", "step", "semantic", "instance", "volumetric", "cross_entropy", "dice", "banana", "", "../x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NAMES), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
                      max_leaves=8)


@st.composite
def experiment_configs(draw: st.DrawFn) -> object:
    """A mapping of sections with known and misspelt keys, or (rarely) something that is not a mapping."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    config: dict[str, object] = {}
    for section in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=4, unique=True)):
        keys = SECTIONS[section]
        if keys is None:
            config[section] = draw(values)
            continue
        if draw(st.integers(0, 5)) == 0:
            config[section] = draw(values)  # a section that is not a mapping
            continue
        chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        config[section] = {key: draw(values) for key in chosen}
    return config


def one_line(error: PixelsegError) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=experiment_configs())
def test_any_experiment_config_loads_or_is_one_line(tmp_path: Path, config: object) -> None:
    path = tmp_path / "experiment.yaml"
    try:
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
    except yaml.YAMLError:
        return
    try:
        load_config(path)
    except PixelsegError as error:
        one_line(error)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_any_override_text_applies_or_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "shapes"}}))
    try:
        load_config(path, [text])
    except PixelsegError as error:
        one_line(error)


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "unet"
    model = create_model("unet", num_classes=3, in_channels=1, padding="same", base_channels=4, depth=2)
    model.pixelseg_config["data"] = {"classes": ["a", "b", "c"], "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
                                     "in_channels": 1, "image_mode": "L", "ignore_index": 255, "mean": [0.5],
                                     "std": [0.5]}
    model.save_pretrained(folder)
    return folder


small_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from(NAMES), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
    max_leaves=6)
CONFIG_KEYS = ["name", "num_classes", "in_channels", "encoder", "kwargs", "data", "task", "refine"]
KWARG_KEYS = ["padding", "base_channels", "depth", "batch_norm", "encoder_weights", "upsampling", "bogus"]


@st.composite
def damaged_configs(draw: st.DrawFn, original: dict) -> object:
    """The saved config.json with some keys (top level, kwargs or data) replaced, removed or added."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(small_values)  # not an object at all
    config = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "kwargs", "data"]))
        if where == "top":
            key = draw(st.sampled_from(CONFIG_KEYS))
            target = config
        elif where == "kwargs" and isinstance(config.get("kwargs"), dict):
            key, target = draw(st.sampled_from(KWARG_KEYS)), config["kwargs"]
        elif isinstance(config.get("data"), dict):
            key, target = draw(st.sampled_from(list(original["data"]) + ["spatial_dims", "bogus"])), config["data"]
        else:
            continue
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(small_values)
    return config


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_saved_config_json_loads_or_is_one_line(tmp_path: Path, saved_unet: Path, data: st.DataObject) -> None:
    original = json.loads((saved_unet / "config.json").read_text())
    folder = tmp_path / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(saved_unet, folder)
    damaged = data.draw(damaged_configs(original))
    text = json.dumps(damaged, allow_nan=True)
    (folder / "config.json").write_text(text)
    try:
        model = from_pretrained(folder)
    except PixelsegError as error:
        one_line(error)
        return
    assert model is not None


def test_the_strategies_reach_both_outcomes(tmp_path: Path) -> None:
    """The suite is only worth something if bad inputs are refused and good ones still load."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"data": {"name": "shapes"}, "optim": {"lr": 0.1}}))
    assert math.isclose(load_config(good).optim.lr, 0.1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"name": "shapes", "batch_size": -2}}))
    with pytest.raises(PixelsegError):
        load_config(bad)
