"""Typed experiment configuration, loaded from YAML and overridden with ``--set key=value``.

A config is nested dataclasses; an unknown key, at any depth, is refused with the closest valid key
named, and values are checked against the field types. ``pixelseg train CONFIG.yaml --set
optim.lr=0.01 --set model.name=fcn8s`` overrides after loading.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import PixelsegError, closest


@dataclass
class ModelConfig:
    name: str = "unet"
    in_channels: int | None = None  # None: from the dataset
    encoder: str | None = None
    encoder_weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which dataset, where, and how to augment it.

    ``name``: ``shapes`` (built in), ``folder`` (``train_images``/``train_masks`` and
    ``val_images``/``val_masks``), ``camvid`` or ``isbi2012`` (``root``). Volumes for 3D models (V-Net):
    ``volumes`` (``.npy``/``.tif`` stacks in the same four folder keys, ``classes`` given),
    ``synthetic_volumes`` (built in: ``num_samples``/``val_samples`` cubes of side ``image_size``) and
    ``isbi2012_volume`` (``root``: the ISBI 2012 stack as one EM volume); they train on random
    ``patch_size`` [D, H, W] crops with ``hflip``/``vflip``/``rotate90`` in the plane and ``dflip``.
    """

    name: str = "shapes"
    root: str | None = None
    train_images: str | None = None
    train_masks: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    image_mode: str = "RGB"
    train_split: str = "train"
    val_split: str = "val"
    ignore_index: int = 255
    num_samples: int = 512  # shapes only
    val_samples: int = 64  # shapes only
    image_size: int = 128  # shapes only
    seed: int = 0  # shapes only
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_size: int | None = None
    patch_size: list[int] | None = None  # volumes: random training crops [D, H, W]
    dflip: bool = False  # volumes: random flips along the depth
    scale_range: list[float] | None = None
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    color_jitter: float = 0.0
    elastic_sigma: float = 0.0
    repeats: int = 1  # the training set is seen this many times per epoch (fresh augmentation each time)
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: int = 0


@dataclass
class LossTerm:
    name: str = "cross_entropy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw or sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    poly_power: float = 0.9  # lr = base_lr * (1 - step / total_steps) ** poly_power
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    out_dir: str = "runs/experiment"
    device: str = "cpu"
    threads: int | None = None
    val_every: int = 1
    monitor: str = "mean_iou"  # metric that picks the best checkpoint
    max_steps_per_epoch: int | None = None


@dataclass
class Config:
    task: str = "semantic"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---- loading -------------------------------------------------------------------------------------------

def _check_type(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except PixelsegError as err:
                errors.append(str(err))
        raise PixelsegError(errors[0] if errors else f"'{key}': bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise PixelsegError(f"'{key}' must be a list, not {value!r}")
        (inner,) = typing.get_args(annotation) or (Any,)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is Any:
        if origin is dict and not isinstance(value, dict):
            raise PixelsegError(f"'{key}' must be a mapping, not {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise PixelsegError(f"'{key}' must be true or false, not {value!r}")
    if annotation in (int, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise PixelsegError(f"'{key}' must be {annotation.__name__}, not {value!r}")
    return value


def _build(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise PixelsegError(f"'{prefix or 'config'}' must be a mapping, not {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise PixelsegError(f"unknown config key '{full}'{closest(full, valid)}")
        kwargs[key] = _check_type(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    return _build(Config, values, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` → (["optim", "lr"], 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise PixelsegError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PixelsegError(f"--set {text}: '{part}' is not a section")
        node[path[-1]] = value
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PixelsegError("config file not found", path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PixelsegError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    if not isinstance(values, dict):
        raise PixelsegError("the config must be a mapping of sections", path)
    return values


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    values = read_yaml(path) if path is not None else {}
    values = apply_overrides(values, overrides or [])
    try:
        return config_from_dict(values)
    except PixelsegError as err:
        raise PixelsegError(str(err), path) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
