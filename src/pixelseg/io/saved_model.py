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
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise PixelsegError("not a pixelseg model config (no model name)", config_path)
    return config


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
