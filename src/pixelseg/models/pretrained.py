"""Saved models: ``save_pretrained`` writes a model folder, ``from_pretrained`` rebuilds the model from it.

The folder format is ``pixelseg.io.saved_model``'s: ``config.json`` (the ``create_model`` call recorded
in ``model.pixelseg_config``, plus what inference needs: task, data, refinement) and
``model.safetensors``. Nothing is unpickled. ``from_pretrained`` also reads the folders written by
earlier versions of ``pixelseg instance train`` (``"task": "instance"`` with ``class_names`` at the top).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import PixelsegError
from ..io.saved_model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_model_config,
    read_model_weights,
    resolve_model_dir,
    write_model_dir,
)
from .registry import create_model

# The keys of config.json that rebuild the network; every other top-level key travels with the model.
BUILD_KEYS = ("name", "num_classes", "in_channels", "encoder", "kwargs")


def config_of(model: nn.Module) -> dict[str, Any]:
    """The recorded ``create_model`` call of ``model`` (with any extra sections added since)."""
    config = getattr(model, "pixelseg_config", None)
    if config is None:
        raise PixelsegError("this model was not built by pixelseg.create_model; its config is unknown")
    return config


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically, file by file)."""
    return write_model_dir(directory, config_of(model), model.state_dict())


def from_pretrained(path: str | Path, *, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model saved with ``save_pretrained`` — from its folder or from a run folder — then load
    its weights."""
    directory = resolve_model_dir(path)
    config = _upgraded(read_model_config(directory))
    name = config["name"]
    kwargs = config.get("kwargs", {})
    if not isinstance(config.get("num_classes"), int) or not isinstance(kwargs, dict):
        raise PixelsegError("unreadable model config (num_classes must be an integer, kwargs an object)",
                            directory / CONFIG_FILE)
    model = create_model(name, num_classes=config["num_classes"], in_channels=config.get("in_channels", 3),
                         encoder=config.get("encoder"), **kwargs)
    # Extra sections (the task, the training data's classes and normalisation, ...) travel with the model.
    model.pixelseg_config.update({k: v for k, v in config.items() if k not in BUILD_KEYS})
    missing, unexpected = model.load_state_dict(read_model_weights(directory, map_location), strict=False)
    if missing or unexpected:
        raise PixelsegError(f"weights do not fit model '{name}': missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}", directory / WEIGHTS_FILE)
    return model


def _upgraded(config: dict[str, Any]) -> dict[str, Any]:
    """Old instance-model folders kept ``class_names`` at the top; it is a builder argument now."""
    if config.get("task") == "instance" and "class_names" in config:
        config = dict(config)
        config["kwargs"] = {**config.get("kwargs", {}), "class_names": config.pop("class_names")}
    return config
