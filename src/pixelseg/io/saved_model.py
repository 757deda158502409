"""The saved-model format of every task: a folder with ``config.json`` and ``model.safetensors``.

``config.json`` holds what rebuilds the network (``name``, ``num_classes``, ``in_channels``,
``encoder``, ``kwargs``) and what the model needs at inference (``task``, ``data``: classes, palette,
normalisation, the dataset it was trained on). ``model.safetensors`` holds the weights. Both are written
atomically; nothing is ever unpickled. A run directory (``pixelseg train``'s ``out_dir``) is accepted
wherever a model folder is: its ``best/`` (or, for runs of older versions, ``model/``) is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import PixelsegError
from .checkpoint import atomic_write_bytes, load_state_dict, save_state_dict_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Where a run directory keeps its model, in order of preference.
RUN_MODEL_FOLDERS = ("best", "model", "last_model")


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a run folder whose ``best/`` (``model/``, ``last_model/``) holds the model."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    for folder in RUN_MODEL_FOLDERS:
        if (path / folder / CONFIG_FILE).is_file():
            return path / folder
    if not path.exists():
        raise PixelsegError("no such model folder", path)
    raise PixelsegError(f"no saved model here (expected {CONFIG_FILE} or best/{CONFIG_FILE})", path)


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model folder, checked to be a JSON object with a model name."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise PixelsegError("not a saved model: file is missing", config_path)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise PixelsegError(f"unreadable model config ({err})", config_path) from None
    if not isinstance(config, dict) or "name" not in config:
        raise PixelsegError("not a pixelseg model config (no model name)", config_path)
    check_model_config(config, config_path)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# config.json is not trusted: every key that is read is checked to have its type before it is used.
_CHECKS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and bool(v), "a model name (text)"),
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "in_channels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "encoder": (lambda v: v is None or isinstance(v, str), "text or null"),
    "kwargs": (lambda v: isinstance(v, dict), "a JSON object"),
    "task": (lambda v: v is None or isinstance(v, str), "text or null"),
    "data": (lambda v: v is None or isinstance(v, dict), "a JSON object or null"),
    "refine": (lambda v: v is None or isinstance(v, dict), "a JSON object or null"),
    "category_ids": (lambda v: isinstance(v, list) and all(_is_int(i) for i in v), "a list of integers"),
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of names"),
}
_DATA_CHECKS: dict[str, tuple[Any, str]] = {
    "classes": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of names"),
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "in_channels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "mean": (lambda v: isinstance(v, list) and all(_is_number(i) for i in v), "a list of numbers"),
    "std": (lambda v: isinstance(v, list) and all(_is_number(i) and i > 0 for i in v), "a list of numbers > 0"),
    "dataset": (lambda v: v is None or isinstance(v, dict), "a JSON object"),
    "palette": (lambda v: isinstance(v, list) and all(isinstance(c, list) and all(_is_int(i) and 0 <= i < 256
                                                                                   for i in c) for c in v),
                "a list of [r, g, b] colours"),
    "image_mode": (lambda v: isinstance(v, str), "a Pillow mode (text)"),
    "ignore_index": (lambda v: _is_int(v), "an integer"),
    "spatial_dims": (lambda v: v in (2, 3) and _is_int(v), "2 or 3"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_model_config(config: dict[str, Any], config_path: Path) -> None:
    """Refuse a ``config.json`` whose keys do not have their types, naming the file and the key."""
    if "num_classes" not in config:
        raise PixelsegError("'num_classes' is missing", config_path)
    for key, (ok, what) in _CHECKS.items():
        if key in config and not ok(config[key]):
            raise PixelsegError(f"'{key}' must be {what}, not {config[key]!r}", config_path)
    for key, (ok, what) in _DATA_CHECKS.items():
        data = config.get("data") or {}
        if key in data and not ok(data[key]):
            raise PixelsegError(f"'data.{key}' must be {what}, not {data[key]!r}", config_path)


def read_model_weights(directory: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The ``model.safetensors`` of a model folder."""
    weights_path = Path(directory) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise PixelsegError("not a saved model: file is missing", weights_path)
    return load_state_dict(weights_path, map_location=map_location)


def write_model_dir(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write ``model.safetensors`` then ``config.json`` into ``directory``, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_state_dict_atomic(state, directory / WEIGHTS_FILE)
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
    return directory
