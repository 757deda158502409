"""One typed experiment configuration for every task, loaded from YAML once and overridden with
``--set key=value``.

Sections: ``task`` (``semantic``, ``volumetric``, ``instance`` or ``panoptic``; inferred from ``data.name`` when left
out), ``model`` (``pixelseg.models.config.ModelConfig``), ``data`` (``pixelseg.data.config.DataConfig``),
``loss``, ``optim`` and ``train``. An unknown key, at any depth, is refused naming the closest valid one
(``pixelseg.io.config``). ``pixelseg train CONFIG.yaml --set optim.lr=0.01 --set model.name=fcn8s``.

Instance configs written for pixelseg 0.1 (``data.kind``, ``train.lr``, ``model.backbone``) are still
read: :func:`upgrade_legacy_instance_config` rewrites them into these sections (deprecated; see
``configs/instance/`` for the current form).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.build import task_of_dataset
from ..data.config import DataConfig
from ..errors import PixelsegError, closest
from ..io.config import apply_overrides, build_typed, read_yaml
from ..models.config import ModelConfig as NetworkConfig

TASKS = ("semantic", "volumetric", "instance", "panoptic", "keypoints")


OPTIMIZERS = ("adamw", "sgd", "rmsprop")
INITS = ("he_uniform", "he_normal", "xavier_uniform")  # pixelseg.models.modules.init
SCHEDULES = ("poly", "step", "constant")
MONITOR_MODES = ("max", "min")
PRECISIONS = ("fp32", "bf16", "fp16")


def check_range(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Refuse ``value`` of config key ``key`` unless ``ok``, in one line naming the key and the allowed range."""
    if not ok:
        raise PixelsegError(f"{key} must be {allowed}, got {value!r}")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PixelsegError(f"unknown {key} '{value}' (choose one of: {', '.join(choices)}){closest(value, choices)}")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _check_prefixes(key: str, prefixes: Any) -> None:
    for prefix in prefixes:
        check_range(key, prefix, isinstance(prefix, str) and bool(prefix.strip()), "parameter-name prefixes "
                    "such as 'encoder' or 'backbone.layer4'")


@dataclass
class ModelConfig(NetworkConfig):
    """The ``model:`` section: the network (``pixelseg.models.config.ModelConfig``) and what training does
    to it before the first step.

    ``init``: re-initialise every convolution and linear layer (``he_uniform``, FC-DenseNet's); ``init_from``:
    a run or model folder whose weights are copied where name and shape match (FCN's staged training,
    32s → 16s → 8s); ``freeze``: parameter-name prefixes that never train (FCN's and DeepLab's fixed layers;
    ``train.unfreeze_at_epoch`` frees them later); ``msc``: DeepLab v2's multi-scale inputs, e.g.
    ``[1.0, 0.75, 0.5]`` (``pixelseg.models.msc``). ``refine: {name: crf_as_rnn, iterations: 5}`` trains
    a CRF-as-RNN layer after the network (``pixelseg.models.crf_as_rnn``); ``{name: crf}`` is the dense CRF
    applied at evaluation and prediction.
    """

    init: str | None = None
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    msc: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init is not None:
            check_choice("model.init", self.init, INITS)
        if self.init_from is not None:
            check_range("model.init_from", self.init_from, bool(self.init_from.strip()),
                        "a run or model folder (or null)")
        _check_prefixes("model.freeze", self.freeze)
        if self.msc is not None:
            check_range("model.msc", self.msc, bool(self.msc) and all(_finite(s) and 0 < s <= 4 for s in self.msc),
                        "a list of input scales in (0, 4], e.g. [1.0, 0.75, 0.5] (or null)")


@dataclass
class WeightMapConfig:
    """U-Net's per-pixel loss weights (Ronneberger et al. 2015, eq. 2; ``pixelseg.data.weight_map``)."""

    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool = True
    background: int = 0  # the label between cells; every other label's connected components are cells
    cache_dir: str | None = None  # null: cached in memory

    def __post_init__(self) -> None:
        check_range("train.weight_map.w0", self.w0, _finite(self.w0) and self.w0 >= 0, "a finite number >= 0")
        check_range("train.weight_map.sigma", self.sigma, _finite(self.sigma) and self.sigma > 0,
                    "a finite number > 0")


@dataclass
class LossTerm:
    name: str = "cross_entropy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..losses import LOSSES

        check_choice("loss name", self.name, tuple(sorted(LOSSES)))
        check_range(f"loss '{self.name}' weight", self.weight, _finite(self.weight) and self.weight >= 0,
                    "a finite number >= 0")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw, sgd or rmsprop (FC-DenseNet's; Lasagne's rho 0.9, epsilon 1e-6, no momentum)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    # poly: lr·(1 − step/total)^poly_power; step: ×0.1 at 75 % and 90 % (Mask R-CNN); constant: Caffe's "fixed"
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_clip: float | None = None  # clip the gradients' global norm to this
    # Learning-rate multipliers of parameter groups by name prefix, e.g. {classifier: 10} (DeepLab's 10x
    # head); a parameter takes its longest matching prefix's, and the schedule scales every group alike.
    lr_mult: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, OPTIMIZERS)
        _check_prefixes("optim.lr_mult", self.lr_mult)
        for prefix, mult in self.lr_mult.items():
            check_range(f"optim.lr_mult.{prefix}", mult, isinstance(mult, int | float) and not isinstance(mult, bool)
                        and _finite(mult) and mult >= 0, "a finite number >= 0")
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        check_range("optim.lr", self.lr, _finite(self.lr) and self.lr > 0, "a finite number > 0")
        check_range("optim.weight_decay", self.weight_decay, _finite(self.weight_decay) and self.weight_decay >= 0,
                    "a finite number >= 0")
        check_range("optim.momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        check_range("optim.poly_power", self.poly_power, _finite(self.poly_power) and self.poly_power > 0,
                    "a finite number > 0")
        check_range("optim.warmup_steps", self.warmup_steps, self.warmup_steps >= 0, "an integer >= 0")
        if self.grad_clip is not None:
            check_range("optim.grad_clip", self.grad_clip, _finite(self.grad_clip) and self.grad_clip > 0,
                        "a finite number > 0 (or null: no clipping)")


@dataclass
class TrainConfig:
    epochs: int = 10
    steps: int | None = None  # total optimizer steps; replaces epochs when set
    seed: int = 0
    out_dir: str = "runs/experiment"
    device: str = "cpu"
    threads: int | None = None
    val_every: int = 1  # validate every this many epochs ...
    val_every_steps: int | None = None  # ... or every this many steps
    checkpoint_every_steps: int | None = None  # a resumable checkpoint also inside epochs
    log_every: int = 20  # steps between progress lines (quiet runs print nothing)
    monitor: str | None = None  # the validation score that picks best/ (default: the task's)
    monitor_mode: str | None = None  # max or min: whether a higher monitor is better (null: min for *error, *loss)
    # Stop (validated, checkpointed, best/ and last_model/ written) after this many validations in a row
    # without a better monitor; the count is saved with the training state, so --resume continues it.
    early_stop_patience: int | None = None
    max_steps_per_epoch: int | None = None
    precise_bn_batches: int | None = None  # instance: recompute BatchNorm statistics before validating [50]
    max_minutes: float | None = None  # time budget: stop cleanly (validated, checkpointed, saved) once spent
    precision: str = "fp32"  # fp32; bf16 (autocast, CPU or CUDA); fp16 (CUDA only, with a GradScaler)
    channels_last: bool = False  # the model's weights (and so its activations) in channels-last layout
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation); schedules count steps
    sync_batchnorm: bool = False  # under torchrun on GPUs: BatchNorm statistics over all processes
    # Parameter-name prefixes frozen until an epoch (0-based), e.g. {encoder: 5}: the encoder trains from
    # the 6th epoch on. The frozen set is a function of the epoch, so --resume restores it exactly.
    unfreeze_at_epoch: dict[str, int] = field(default_factory=dict)
    weight_map: WeightMapConfig | None = None  # U-Net's border weights as per-pixel loss weights

    def __post_init__(self) -> None:
        _check_prefixes("train.unfreeze_at_epoch", self.unfreeze_at_epoch)
        for prefix, epoch in self.unfreeze_at_epoch.items():
            check_range(f"train.unfreeze_at_epoch.{prefix}", epoch,
                        isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0, "an integer >= 0")
        at_least_one = ("epochs", "val_every", "log_every", "accumulate")
        at_least_one_when_set = ("steps", "threads", "val_every_steps", "checkpoint_every_steps",
                                 "max_steps_per_epoch", "early_stop_patience")
        for name in at_least_one:
            check_range(f"train.{name}", getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")
        for name in at_least_one_when_set:
            value = getattr(self, name)
            if value is not None:
                check_range(f"train.{name}", value, value >= 1, "an integer >= 1 (or null)")
        check_range("train.seed", self.seed, 0 <= self.seed < 2**32, "an integer in [0, 2^32)")
        if self.precise_bn_batches is not None:
            check_range("train.precise_bn_batches", self.precise_bn_batches, self.precise_bn_batches >= 0,
                        "an integer >= 0 (or null: the task's default)")
        if self.max_minutes is not None:
            check_range("train.max_minutes", self.max_minutes, _finite(self.max_minutes) and self.max_minutes > 0,
                        "a finite number of minutes > 0 (or null: no time budget)")
        check_choice("train.precision", self.precision, PRECISIONS)
        if self.monitor_mode is not None:
            check_choice("train.monitor_mode", self.monitor_mode, MONITOR_MODES)
        check_range("train.out_dir", self.out_dir, bool(self.out_dir.strip()), "a folder name")
        try:
            import torch

            torch.device(self.device)
        except RuntimeError:
            raise PixelsegError(f"train.device must be a device such as cpu, cuda or cuda:1, got {self.device!r}") \
                from None


@dataclass
class Config:
    task: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):  # the network section alone (models.config's)
            self.model = ModelConfig(**{f.name: getattr(self.model, f.name) for f in dataclasses.fields(self.model)})
        inferred = task_of_dataset(self.data.name)
        if self.task is None:
            self.task = inferred
        elif self.task not in TASKS:
            raise PixelsegError(f"unknown task '{self.task}' (choose one of: {', '.join(TASKS)})")
        elif self.task != inferred:
            raise PixelsegError(f"task is '{self.task}' but data.name '{self.data.name}' is a {inferred} dataset")


# ---- loading -------------------------------------------------------------------------------------------

def config_from_dict(values: dict[str, Any]) -> Config:
    return build_typed(Config, upgrade_legacy_instance_config(values), "")


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                require_data: bool = False) -> Config:
    """The config file (read once) with the ``key=value`` overrides applied, checked and typed.

    ``require_data`` (``pixelseg train``): refuse a config that names no dataset instead of falling back to
    the built-in Shapes set, which stays reachable by naming it (``data: {name: shapes}``)."""
    values = read_yaml(path) if path is not None else {}
    try:
        values = apply_overrides(upgrade_legacy_instance_config(values), overrides or [])
        data = values.get("data")
        if require_data and (data is None or (isinstance(data, dict) and "name" not in data)):
            raise PixelsegError("the config names no dataset: add a 'data' section with a name (e.g. "
                                "data: {name: camvid, root: ...}, or data: {name: shapes} for the built-in set)")
        return config_from_dict(values)
    except PixelsegError as err:
        raise PixelsegError(str(err), path) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


# ---- pixelseg 0.1 instance configs ---------------------------------------------------------------------

_LEGACY_DATA = {"synthetic": "synthetic_instances", "coco": "coco_instances", "folder": "instance_folder"}
_LEGACY_TRAIN = {"steps": ("train", "steps"), "batch_size": ("data", "batch_size"), "optimizer": ("optim", "name"),
                 "lr": ("optim", "lr"), "momentum": ("optim", "momentum"), "weight_decay": ("optim", "weight_decay"),
                 "warmup_steps": ("optim", "warmup_steps"), "grad_clip": ("optim", "grad_clip"),
                 "hflip": ("data", "hflip"), "seed": ("train", "seed"), "num_workers": ("data", "num_workers"),
                 "log_every": ("train", "log_every"), "precise_bn_batches": ("train", "precise_bn_batches"),
                 "eval_every": ("train", "val_every_steps"), "checkpoint_every": ("train", "checkpoint_every_steps"),
                 "out_dir": ("train", "out_dir"), "threads": ("train", "threads")}
_LEGACY_SPLIT = {"synthetic": {"train": {"length": "num_samples", "size": "image_size", "seed": "seed"},
                               "val": {"length": "val_samples", "size": "image_size", "seed": "seed"}},
                 "coco": {"train": {"annotation_file": "train_annotations", "image_dir": "train_images"},
                          "val": {"annotation_file": "val_annotations", "image_dir": "val_images"}},
                 "folder": {"train": {"val_count": "val_count", "root": "root", "images_dir": "images_subdir",
                                      "masks_dir": "masks_subdir", "split": None},
                            "val": {"val_count": "val_count", "root": "root", "images_dir": "images_subdir",
                                    "masks_dir": "masks_subdir", "split": None}}}


def is_legacy_instance_config(values: dict[str, Any]) -> bool:
    data, model = values.get("data"), values.get("model")
    return values.get("task") == "instance" and (
        (isinstance(data, dict) and "kind" in data) or (isinstance(model, dict) and "name" not in model)
        or (isinstance(values.get("train"), dict) and any(k in values["train"] for k in ("lr", "eval_every"))))


def upgrade_legacy_instance_config(values: dict[str, Any]) -> dict[str, Any]:
    """A pixelseg 0.1 instance config (``data.kind``, ``train.lr``, ``model.backbone``, ...) in the
    sections every task shares; any other config is returned unchanged."""
    if not is_legacy_instance_config(values):
        return values
    warnings.warn("this instance config uses the pixelseg 0.1 layout (data.kind, train.lr, ...); it is read "
                  "as the shared sections (see configs/instance/)", DeprecationWarning, stacklevel=3)
    unknown = set(values) - {"task", "model", "data", "train"}
    if unknown:
        raise PixelsegError(f"unknown top-level key(s) {', '.join(sorted(unknown))} (expected task, model, data, "
                            "train)")
    model = dict(values.get("model") or {})
    model.setdefault("backbone", "mobilenet_v3_large")
    upgraded: dict[str, Any] = {"task": "instance", "model": {"name": "mask_rcnn", "kwargs": model},
                                "data": {"batch_size": 4}, "loss": [],
                                "optim": {"name": "sgd", "lr": 0.02, "schedule": "step", "warmup_steps": 100,
                                          "grad_clip": 10.0},
                                "train": {"steps": 1000, "val_every_steps": 500, "checkpoint_every_steps": 100,
                                          "out_dir": "runs/instance", "precise_bn_batches": 50}}
    data = dict(values.get("data") or {})
    kind = data.pop("kind", "synthetic")
    if kind not in _LEGACY_DATA:
        raise PixelsegError(f"unknown data.kind '{kind}' (choose synthetic, coco or folder)")
    upgraded["data"]["name"] = _LEGACY_DATA[kind]
    if "root" in data:
        upgraded["data"]["root"] = data.pop("root")
    for split in ("train", "val"):
        options = data.pop(split, None) or {}
        if not isinstance(options, dict):
            raise PixelsegError(f"data.{split} must be a mapping, not {options!r}")
        for key, value in options.items():
            if key not in _LEGACY_SPLIT[kind][split]:
                raise PixelsegError(f"data.{split}: unknown key '{key}' for data.kind '{kind}' "
                                    f"(known: {', '.join(_LEGACY_SPLIT[kind][split])})")
            target = _LEGACY_SPLIT[kind][split][key]
            if target is not None:
                upgraded["data"][target] = value
    if data:
        raise PixelsegError(f"unknown data key(s) {', '.join(sorted(data))} for data.kind '{kind}'")
    train = values.get("train") or {}
    if not isinstance(train, dict):
        raise PixelsegError(f"'train' must be a mapping, not {train!r}")
    for key, value in train.items():
        if key not in _LEGACY_TRAIN:
            raise PixelsegError(f"unknown train key '{key}'{_closest_legacy(key)}")
        section, name = _LEGACY_TRAIN[key]
        upgraded[section][name] = value
    return upgraded


def _closest_legacy(key: str) -> str:
    from ..errors import closest

    return closest(key, _LEGACY_TRAIN)
