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
# Builder arguments that load (or download) weights from a file or a hub: the saved weights come from
# model.safetensors, so a saved config never makes loading read, fetch or unpickle anything else.
WEIGHT_ARGUMENTS = ("encoder_weights", "backbone_weights", "weights", "pretrained", "checkpoint")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".safetensors", ".npz", ".h5")


def names_a_file(value: Any) -> bool:
    """Whether a saved builder argument looks like a path or URL (which a saved config may not hand on)."""
    if not isinstance(value, str):
        return False
    text = value.strip().lower()
    return "/" in text or "\\" in text or "://" in text or text.endswith(_WEIGHT_SUFFIXES)


def rebuild_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The saved builder arguments without those that name weights or files."""
    return {k: v for k, v in kwargs.items() if k not in WEIGHT_ARGUMENTS and not names_a_file(v)}


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
    kwargs = rebuild_arguments(config.get("kwargs", {}))
    try:
        model = create_model(name, num_classes=config["num_classes"], in_channels=config.get("in_channels", 3),
                             encoder=config.get("encoder"), **kwargs)
    except (ValueError, TypeError, RuntimeError, KeyError, AssertionError) as err:
        raise PixelsegError(f"the saved model '{name}' cannot be rebuilt from its config ({_first_line(err)})",
                            directory / CONFIG_FILE) from None
    # Extra sections (the task, the training data's classes and normalisation, ...) travel with the model.
    model.pixelseg_config.update({k: v for k, v in config.items() if k not in BUILD_KEYS})
    try:
        missing, unexpected = model.load_state_dict(read_model_weights(directory, map_location), strict=False)
    except RuntimeError as err:  # same names, other shapes: another width or class count
        raise PixelsegError(f"weights do not fit model '{name}' as its config.json describes it "
                            f"({_first_line(err)})", directory / WEIGHTS_FILE) from None
    # A backbone trained from pretrained weights has frozen batch norms (no step counter); rebuilt without
    # them it has ordinary ones in eval mode — the same function, one buffer more.
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise PixelsegError(f"weights do not fit model '{name}': missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}", directory / WEIGHTS_FILE)
    return model


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] or type(error).__name__


def _upgraded(config: dict[str, Any]) -> dict[str, Any]:
    """Old instance-model folders kept ``class_names`` at the top; it is a builder argument now."""
    if config.get("task") == "instance" and "class_names" in config and isinstance(config.get("kwargs", {}), dict):
        config = dict(config)
        config["kwargs"] = {**config.get("kwargs", {}), "class_names": config.pop("class_names")}
    return config
