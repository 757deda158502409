"""Typed experiment configuration, loaded from YAML and overridden with ``--set key=value``.

A config is nested dataclasses; an unknown key, at any depth, is refused with the closest valid key
named, and values are checked against the field types. ``pixelseg train CONFIG.yaml --set
optim.lr=0.01 --set model.name=fcn8s`` overrides after loading.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.config import DataConfig
from ..errors import PixelsegError
from ..io.config import apply_overrides, build_typed, read_yaml


@dataclass
class ModelConfig:
    name: str = "unet"
    in_channels: int | None = None  # None: from the dataset
    encoder: str | None = None
    encoder_weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


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

def config_from_dict(values: dict[str, Any]) -> Config:
    return build_typed(Config, values, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    values = read_yaml(path) if path is not None else {}
    values = apply_overrides(values, overrides or [])
    try:
        return config_from_dict(values)
    except PixelsegError as err:
        raise PixelsegError(str(err), path) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
