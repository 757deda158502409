"""The one trainer: every task (semantic, volumetric, instance) trains through :class:`Trainer`.

The loop is the same for all of them — batches from the task's data, the task's loss, AdamW or SGD with
a poly, step or constant learning-rate schedule, validation with the task's evaluator, atomic checkpoints
and an exact ``--resume`` — and the side work is done by hooks (:class:`Hook`): the learning-rate schedule,
the progress display, the CSV log and curves, and the checkpoints. Training stops before ``train.steps``
(or ``epochs``) at the time budget (``train.max_minutes``) or when the monitored score has not improved for
``train.early_stop_patience`` validations; either way validated, checkpointed and saved, and resumable.

Run directory (``train.out_dir``)::

    config.yaml          the resolved configuration
    last.safetensors     full training state (model, optimizer, RNG, progress) — for --resume
    best/                the best model so far by train.monitor: config.json + model.safetensors + metrics.json
    last_model/          the model at the end of training
    log.csv, curves.png  one row / point per epoch (and per validation inside an epoch)

Exact resume: at the start of epoch ``e`` the RNG is seeded from ``(seed, e)``; a checkpoint inside an epoch
stores the RNG state, and the resumed run replays the epoch's batch order up to it, so continuing replays
precisely what an uninterrupted run would do.

Under ``torchrun`` (``engine/distributed.py``) the model is wrapped in ``DistributedDataParallel``, each
process trains on its share of every global batch (``data.batch_size`` images per process and micro-batch),
validation is split over the processes and its scores summed (the evaluators' ``all_reduce``), and only rank
0 writes the run folder. ``train.precision`` (bf16 autocast; fp16 with a gradient scaler on CUDA),
``train.channels_last`` and ``train.accumulate`` (micro-batches per optimizer step) apply to any run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from ..data.build import DataBundle, DatasetInfo, build_data
from ..errors import PixelsegError, closest
from ..io.checkpoint import atomic_write_bytes, load_training_state, save_training_state
from ..io.saved_model import read_model_weights, resolve_model_dir
from ..models.modules.init import initialize
from ..models.pretrained import save_pretrained
from ..tasks.base import Task, get_task
from .config import SCHEDULES, Config, config_to_dict
from .distributed import (
    SINGLE,
    EvaluationShard,
    ProcessGroup,
    ShardedBatches,
    all_reduce_values,
    gather_rng_states,
    global_batch_count,
    init_distributed,
    restore_rng_state,
    shutdown,
)

console = Console(stderr=True)

CLASS_WEIGHTINGS = ("median_frequency", "enet")
# What a run writes into its folder; a run that fails before its first checkpoint removes those it created.
RUN_FILES = ("config.yaml", "log.csv", "curves.png", "last.safetensors", "best", "last_model")

clock = time.monotonic  # the time budget's clock (a seam for tests)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal (SIGTERM) after writing a checkpoint; the message says where."""


def quiet_of(hooks: list[Hook]) -> bool:
    return not any(isinstance(hook, ProgressDisplay) and not hook.quiet for hook in hooks)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] or type(error).__name__


TRAINED_REFINERS = ("crf_as_rnn",)  # model.refine names that are layers of the model, trained with it


def wrapped_model_config(config: Config, info: DatasetInfo) -> Any:
    """``config.model`` as the registered wrappers build it: ``msc`` (DeepLab's multi-scale inputs) and
    ``crf_as_rnn`` (a trainable CRF layer) around the named network, so that a saved model rebuilds them."""
    model = config.model
    refine = dict(model.refine or {})
    if model.msc is None and refine.get("name") not in TRAINED_REFINERS:
        return model
    if config.task != "semantic":
        raise PixelsegError(f"model.msc and model.refine {refine.get('name')} apply to semantic models, not to "
                            f"the {config.task} task")
    name, kwargs = model.name, dict(model.kwargs)
    if model.msc is not None:
        name, kwargs = "msc", {"base": name, "base_kwargs": kwargs, "scales": list(model.msc)}
    if refine.get("name") in TRAINED_REFINERS:
        refine.pop("name")
        iterations = refine.pop("iterations", 5)
        name, kwargs = "crf_as_rnn", {"base": name, "base_kwargs": kwargs, "iterations": iterations,
                                      "mean": list(info.mean), "std": list(info.std), "crf": refine}
    return dataclasses.replace(model, name=name, kwargs=kwargs, refine=None, msc=None)


def build_model_for(config: Config, info: DatasetInfo) -> nn.Module:
    """The configured model for a dataset, with the data facts it needs at inference saved in its config;
    re-initialised if ``model.init`` says so."""
    task = get_task(config.task or "semantic")
    try:
        model = task.build_model(wrapped_model_config(config, info), info)
    except (ValueError, TypeError, RuntimeError, KeyError, AssertionError) as err:  # the builder refused model.*
        raise PixelsegError(f"model '{config.model.name}' cannot be built from model.kwargs "
                            f"{config.model.kwargs} ({type(err).__name__}: {_first_line(err)})") from None
    if config.model.init is not None:
        initialize(model, config.model.init)
    model.pixelseg_config["task"] = task.name
    model.pixelseg_config["data"] = {**asdict(info), "dataset": asdict(config.data)}
    if config.model.refine is not None and config.model.refine.get("name") not in TRAINED_REFINERS:
        model.pixelseg_config["refine"] = dict(config.model.refine)
    return model


@dataclasses.dataclass
class InitReport:
    """What ``model.init_from`` copied: tensor names loaded, skipped (another shape) and not in the source."""

    source: Path
    loaded: list[str]
    other_shape: list[str]
    absent: list[str]

    def line(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f", ... ({len(keys)})" if len(keys) > 4 else "")

        text = f"model.init_from {self.source}: loaded {len(self.loaded)} tensors"
        if self.other_shape:
            text += f"; skipped {len(self.other_shape)} of another shape ({names(self.other_shape)})"
        if self.absent:
            text += f"; {len(self.absent)} not in the source ({names(self.absent)})"
        return text


def init_from(model: nn.Module, path: str | Path) -> InitReport:
    """Copy into ``model`` the saved weights (``model.safetensors`` of a model or run folder; never a
    pickle) whose name and shape match its own — FCN-16s from FCN-32s, FCN-8s from FCN-16s."""
    directory = resolve_model_dir(path)
    source = read_model_weights(directory)
    own = model.state_dict()
    loaded, other_shape, absent = [], [], []
    for name, tensor in own.items():
        if name not in source:
            absent.append(name)
        elif source[name].shape != tensor.shape:
            other_shape.append(name)
        else:
            loaded.append(name)
    if not loaded:
        raise PixelsegError(f"model.init_from: no weight of the saved model has the name and shape of one of "
                            f"model '{getattr(model, 'pixelseg_config', {}).get('name')}'", directory)
    with torch.no_grad():
        for name in loaded:
            own[name].copy_(source[name])
    return InitReport(directory, loaded, other_shape, absent)


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def frozen_prefixes(config: Config, epoch: int) -> list[str]:
    """The parameter-name prefixes frozen during ``epoch`` (0-based): ``model.freeze`` for good, and
    ``train.unfreeze_at_epoch``'s until their epoch. A function of the epoch alone (exact resume)."""
    schedule = config.train.unfreeze_at_epoch
    frozen = [p for p in config.model.freeze if p not in schedule]
    return frozen + [p for p, start in schedule.items() if epoch < start]


def apply_freezing(config: Config, model: nn.Module, epoch: int) -> None:
    """Freeze the parameters under :func:`frozen_prefixes` of ``epoch`` and free the others those settings
    name; parameters they do not name keep what the model's builder chose."""
    named = [*config.model.freeze, *config.train.unfreeze_at_epoch]
    if not named:
        return
    frozen = frozen_prefixes(config, epoch)
    for name, parameter in model.named_parameters():
        if any(_matches(name, p) for p in named):
            parameter.requires_grad_(not any(_matches(name, p) for p in frozen))


def check_prefixes(config: Config, model: nn.Module) -> None:
    """Refuse a freeze, unfreeze or lr_mult prefix that names no parameter of the model."""
    names = [name for name, _ in model.named_parameters()]
    keys = [("model.freeze", config.model.freeze), ("train.unfreeze_at_epoch", config.train.unfreeze_at_epoch),
            ("optim.lr_mult", config.optim.lr_mult)]
    for key, prefixes in keys:
        for prefix in prefixes:
            if not any(_matches(name, prefix) for name in names):
                tops = sorted({name.split(".")[0] for name in names})
                raise PixelsegError(f"{key}: '{prefix}' is the prefix of no parameter of model "
                                    f"'{config.model.name}' (its top-level parts: {', '.join(tops)})"
                                    f"{closest(prefix, tops)}")


def loss_terms(config: Config, data: DataBundle | None = None) -> list[dict[str, Any]]:
    """The config's loss terms; ``class_weights: median_frequency`` or ``enet`` is computed from the
    training split (as ``pixelseg stats`` prints it)."""
    terms = []
    stats = None
    for term in config.loss:
        params = dict(term.params)
        weighting = params.get("class_weights")
        if isinstance(weighting, str):
            if weighting not in CLASS_WEIGHTINGS:
                raise PixelsegError(f"loss '{term.name}': class_weights '{weighting}' is not a weighting"
                                    f"{closest(weighting, CLASS_WEIGHTINGS)} (or give a list of numbers)")
            if stats is None:
                stats = (data or build_data(config.data)).class_stats()
            weights = stats.median_frequency_weights() if weighting == "median_frequency" else stats.enet_weights()
            params["class_weights"] = [float(w) for w in weights]
        terms.append({"name": term.name, "weight": term.weight, **params})
    return terms


def parameter_groups(config: Config, model: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's groups: every parameter that trains at some epoch (not ``model.freeze``'s for good),
    by ``optim.lr_mult`` prefix (the longest that matches; the others in a first group of multiplier 1)."""
    schedule = config.train.unfreeze_at_epoch
    frozen = [p for p in config.model.freeze if p not in schedule]
    mults = config.optim.lr_mult
    groups: dict[str | None, list[nn.Parameter]] = {None: [], **{prefix: [] for prefix in mults}}
    for name, parameter in model.named_parameters():
        if any(_matches(name, p) for p in frozen):
            continue
        if not parameter.requires_grad and not any(_matches(name, p) for p in schedule):
            continue  # frozen by the model's builder
        prefix = max((p for p in mults if _matches(name, p)), key=len, default=None)
        groups[prefix].append(parameter)
    return [{"params": params, "lr_mult": 1.0 if prefix is None else float(mults[prefix])}
            for prefix, params in groups.items() if params]


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    groups = parameter_groups(config, model)
    if not groups:
        raise PixelsegError(f"model '{config.model.name}' has no trainable parameters")
    try:
        if optim.name == "adamw":
            return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
        if optim.name == "sgd":
            return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
        if optim.name == "rmsprop":  # FC-DenseNet trained with Lasagne's rmsprop: rho 0.9, epsilon 1e-6
            return torch.optim.RMSprop(groups, lr=optim.lr, alpha=0.9, eps=1e-6, weight_decay=optim.weight_decay)
    except ValueError as err:  # torch's own range checks of the optim section
        raise PixelsegError(f"optim: {err}") from None
    raise PixelsegError(f"unknown optimizer '{optim.name}' (adamw, sgd or rmsprop)")


def poly_lr(base_lr: float, step: int, total_steps: int, power: float, warmup_steps: int = 0) -> float:
    """``base_lr · (1 − step/total)^power`` (DeepLab's poly schedule), with optional linear warm-up."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * max(0.0, 1 - step / max(total_steps, 1)) ** power


def step_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Mask R-CNN's schedule, shortened: linear warm-up from 1/1000, then ×0.1 at 75 % and again at 90 %."""
    if step < warmup_steps:
        return base_lr * (0.001 + (1 - 0.001) * step / warmup_steps)
    return base_lr * (0.1 ** ((step >= math.floor(0.75 * total_steps)) + (step >= math.floor(0.9 * total_steps))))


def learning_rate(config: Config, step: int, total_steps: int) -> float:
    optim = config.optim
    if optim.schedule == "poly":
        return poly_lr(optim.lr, step, total_steps, optim.poly_power, optim.warmup_steps)
    if optim.schedule == "step":
        return step_lr(optim.lr, step, total_steps, optim.warmup_steps)
    if optim.schedule == "constant":  # after the optional linear warm-up
        return optim.lr * min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else optim.lr
    raise PixelsegError(f"unknown optim.schedule '{optim.schedule}'{closest(optim.schedule, SCHEDULES)}")


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put ``model``'s 4-D weights in channels-last layout (5-D ones in channels-last-3d), in place: the
    convolutions then produce channels-last activations, which oneDNN and cuDNN run faster in bf16/fp16."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() in (4, 5):
            layout = torch.channels_last if tensor.dim() == 4 else torch.channels_last_3d
            tensor.data = tensor.data.contiguous(memory_format=layout)
    return model


def compute_loss(task: Task, model: nn.Module, batch: Any, criterion: nn.Module | None, device: torch.device):
    """The task's loss of one batch (a seam for tests that interrupt training)."""
    return task.loss(model, batch, criterion, device)


@torch.no_grad()
def evaluate_model(task: Task, model: nn.Module, loader: DataLoader, info: DatasetInfo, device: torch.device,
                   forward: Any = None, progress: Progress | None = None) -> dict[str, Any]:
    """One pass of the task's evaluator over ``loader``; ``forward`` replaces the model (e.g. TTA). Under
    ``torch.distributed`` each process scores its share and the evaluator sums them (``all_reduce``)."""
    model.eval()
    evaluator = task.evaluator(info)
    shown = progress.add_task("validate", total=len(loader), loss="") if progress else None
    for batch in loader:
        task.evaluate_batch(forward or model, batch, evaluator, device)
        if progress is not None:
            progress.advance(shown)
    if progress is not None:
        progress.remove_task(shown)
    evaluator.all_reduce()
    return evaluator.compute()


# ---- hooks ---------------------------------------------------------------------------------------------

class Hook:
    """Side work of the loop; every method is optional. A hook with ``main_process_only`` (one that writes
    or displays) runs on rank 0 alone under torchrun."""

    main_process_only: ClassVar[bool] = False

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, loss: float, parts: dict[str, float]) -> None: ...
    def on_row(self, trainer: Trainer, row: dict[str, Any]) -> None: ...
    def on_validation(self, trainer: Trainer, scores: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: Trainer) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


class LearningRateSchedule(Hook):
    def on_step_start(self, trainer: Trainer) -> None:
        lr = learning_rate(trainer.config, trainer.step, trainer.total_steps)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)


class ProgressDisplay(Hook):
    """A rich progress bar per epoch with the running loss and an ETA for the whole run."""

    main_process_only = True

    def __init__(self, quiet: bool) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[loss]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 transient=True, disable=quiet)
        self.quiet = quiet
        self.bar: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.progress.start()
        self.bar = self.progress.add_task("train", total=trainer.total_steps, completed=trainer.step, loss="")

    def on_step_end(self, trainer: Trainer, loss: float, parts: dict[str, float]) -> None:
        self.progress.update(self.bar, completed=trainer.step, loss=f"loss {trainer.running_loss():.4f}",
                             description=f"epoch {trainer.epoch + 1}/{trainer.epochs}")

    def on_row(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if not self.quiet:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            console.print(", ".join(f"{k}={v}" for k, v in shown.items()))

    def on_train_end(self, trainer: Trainer) -> None:
        self.progress.stop()


class CsvLog(Hook):
    """``log.csv`` (one row per epoch and per validation) and ``curves.png``, both rewritten atomically."""

    main_process_only = True

    def on_row(self, trainer: Trainer, row: dict[str, Any]) -> None:
        history = trainer.history
        columns: list[str] = []
        for entry in history:
            columns += [c for c in entry if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(trainer.out_dir / "log.csv", buffer.getvalue().encode())
        plot_curves(trainer.out_dir, history, trainer.monitor)


class Checkpointer(Hook):
    """``last.safetensors`` (resumable) at every epoch end and every ``checkpoint_every_steps``; ``best/``
    when the monitored score improves; ``last_model/`` at the end."""

    main_process_only = True

    def on_validation(self, trainer: Trainer, scores: dict[str, Any]) -> None:
        if trainer.improved:  # judged by the trainer (Trainer._judge), on every process alike
            save_pretrained(trainer.model, trainer.out_dir / "best")
            atomic_write_bytes(trainer.out_dir / "best" / "metrics.json",
                               json.dumps({"epoch": trainer.epoch + 1, "step": trainer.step, **scores},
                                          indent=2).encode())

    def on_checkpoint(self, trainer: Trainer) -> None:
        info = {"epoch": trainer.epoch, "epoch_step": trainer.epoch_step, "step": trainer.step,
                "best": trainer.best, "history": trainer.history, "running": trainer.running,
                "stale_validations": trainer.stale_validations, "monitor": trainer.monitor,
                "monitor_mode": trainer.monitor_mode}
        if trainer.rank_rng_states is not None:  # under torchrun: every process's RNG, for an exact resume
            info["rng_ranks"] = trainer.rank_rng_states
        save_training_state(trainer.state_path, model=trainer.model, optimizer=trainer.optimizer, info=info)
        trainer.checkpointed = True

    def on_train_end(self, trainer: Trainer) -> None:
        save_pretrained(trainer.model, trainer.out_dir / "last_model")


# ---- the loop ------------------------------------------------------------------------------------------

def item_names(dataset: Any, indices: list[int]) -> list[str] | None:
    """The file names of dataset items (``image_info`` or the image paths of a folder), or ``None``."""
    names = []
    for index in indices:
        node, position = dataset, index
        while hasattr(node, "indices") and hasattr(node, "dataset"):  # torch Subset
            node, position = node.dataset, node.indices[position]
        name = None
        if hasattr(node, "image_info"):
            name = node.image_info(position).get("file_name")
        elif isinstance(getattr(node, "samples", None), list):
            name = str(node.samples[position][0])
        elif isinstance(getattr(node, "pairs", None), list):
            name = str(node.pairs[position][0])
        if name is None:
            return None
        names.append(str(name))
    return names


class Trainer:
    """Trains ``config`` with its task's plug-in; :meth:`fit` returns the run directory."""

    def __init__(self, config: Config, *, resume: bool = False, quiet: bool = False,
                 hooks: list[Hook] | None = None) -> None:
        self.config, self.resume = config, resume
        self.task = get_task(config.task or "semantic")
        self.out_dir = Path(config.train.out_dir)
        self.state_path = self.out_dir / "last.safetensors"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise PixelsegError("train.out_dir is a file, not a folder", self.out_dir)
        if self.state_path.exists() and not resume:
            raise PixelsegError("the run directory already holds a checkpoint; pass --resume to continue it "
                                "or set train.out_dir to a new directory", self.out_dir)
        if resume and not self.state_path.exists():
            raise PixelsegError("nothing to resume: no last.safetensors here", self.out_dir)
        self.monitor = config.train.monitor or self.task.monitor
        self.monitor_mode = monitor_mode(self.monitor, config.train.monitor_mode)
        self.hooks = hooks if hooks is not None else [LearningRateSchedule(), ProgressDisplay(quiet), CsvLog(),
                                                      Checkpointer()]
        self.epoch = self.epoch_step = self.step = 0
        self.best = -math.inf if self.monitor_mode == "max" else math.inf
        self.improved = False  # the last validation bettered the monitor
        self.stale_validations = 0  # validations in a row without a better monitor (early stopping)
        self.early_stopped = False
        self.history: list[dict[str, Any]] = []
        self.running: dict[str, float] = {"loss": 0.0, "count": 0.0}
        self.stop_signal: str | None = None  # set by the SIGTERM handler; acted on between steps
        self.time_up = False
        self.deadline: float | None = None
        self.checkpointed = False  # this run wrote last.safetensors
        self.group: ProcessGroup = SINGLE  # torchrun's process group (set in _setup)
        self.rank_rng_states: list[str] | None = None  # every process's RNG state at the last checkpoint
        self.created: list[Path] = []  # what this run created (removed if it fails before a checkpoint)

    # -- setup --
    def _setup(self) -> None:
        config = self.config
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.group, self.device = init_distributed(config.train.device)
        group = self.group
        self._check_precision()
        if not group.is_main:
            self.hooks = [hook for hook in self.hooks if not hook.main_process_only]
        torch.manual_seed(config.train.seed)
        weight_map = config.train.weight_map
        self.data = build_data(config.data, weight_map=weight_map) if weight_map else build_data(config.data)
        per_step = config.data.batch_size * group.world_size * config.train.accumulate
        if len(self.data.train) < (per_step if self.task.drop_last else 1):
            raise PixelsegError(f"the training set has {len(self.data.train)} images, fewer than one optimizer "
                                f"step's {per_step} (data.batch_size {config.data.batch_size} × "
                                f"{group.world_size} processes × train.accumulate {config.train.accumulate})")
        self.model = build_model_for(config, self.data.info).to(self.device)
        check_prefixes(config, self.model)
        if config.train.unfreeze_at_epoch and group.enabled:
            raise PixelsegError("train.unfreeze_at_epoch does not run under torchrun (DistributedDataParallel "
                                "fixes the trained parameters when it wraps the model); train on one process")
        self.init_report: InitReport | None = None
        if config.model.init_from is not None and not self.resume:  # a resumed run has its own weights
            self.init_report = init_from(self.model, config.model.init_from)
            if not quiet_of(self.hooks) and group.is_main:
                console.print(self.init_report.line(), highlight=False, soft_wrap=True)
        apply_freezing(config, self.model, self.epoch)
        if config.train.channels_last:
            to_channels_last(self.model)
        self.train_model = self._wrap_for_processes(self.model)
        self.criterion = self.task.build_criterion(loss_terms(config, self.data), self.data)
        if self.criterion is not None:
            self.criterion = self.criterion.to(self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type) if config.train.precision == "fp16" else None
        batches = global_batch_count(len(self.data.train), config.data.batch_size, self.task.drop_last,
                                     group.world_size, config.train.accumulate)
        self.steps_per_epoch = min(batches, config.train.max_steps_per_epoch or batches)
        if config.train.steps is not None:
            self.total_steps = config.train.steps
            self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        else:
            self.epochs = config.train.epochs
            self.total_steps = self.steps_per_epoch * self.epochs
        shard = EvaluationShard(self.data.val, group.rank, group.world_size) if group.enabled else None
        self.val_loader = DataLoader(self.data.val, batch_size=config.data.val_batch_size, shuffle=False,
                                     sampler=shard, num_workers=config.data.num_workers,
                                     collate_fn=self.data.collate)
        self.rng_after_skip: torch.Tensor | None = None
        if self.resume:
            state = load_training_state(self.state_path, model=self.model, optimizer=self.optimizer)
            self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
            self.epoch_step, self.history = state.get("epoch_step", 0), state["history"]
            self.running = state.get("running", self.running)
            self.stale_validations = state.get("stale_validations", 0)
            self._judge_history_again_if_the_monitor_changed(state)
            if not group.is_main:  # rank 0 carries the saved (all processes') running sums
                self.running = {key: 0.0 for key in self.running}
            restore_rng_state(state.get("rng_ranks"), group)
            if self.epoch_step:  # inside an epoch: replay its batch order, then the saved RNG state
                self.rng_after_skip = torch.get_rng_state()
        elif group.is_main:
            # Created only now that the data and the model are built: a refused config leaves no folder.
            self.created = [path for path in [self.out_dir, *(self.out_dir / n for n in RUN_FILES)]
                            if not path.exists()]
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out_dir / "config.yaml",
                               yaml.safe_dump(config_to_dict(config), sort_keys=False).encode())
        self.first_step = self.step

    def _check_precision(self) -> None:
        train_cfg = self.config.train
        if train_cfg.precision == "fp16" and self.device.type != "cuda":
            raise PixelsegError(f"train.precision fp16 needs a CUDA device (train.device is {self.device.type}); "
                                "use bf16 on the CPU")
        if train_cfg.sync_batchnorm and self.group.enabled and self.device.type == "cpu":
            raise PixelsegError("train.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the "
                                "CPU); leave it off or train with train.device=cuda")

    def _wrap_for_processes(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` under torchrun (BatchNorm synchronised if asked), else
        itself. ``self.model`` stays the bare module: it is what is saved and validated."""
        if not self.group.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.config.train.sync_batchnorm:
            self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Some models leave parameters out of a step (auxiliary heads, RoI heads without proposals).
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: ``torch.autocast`` for bf16/fp16, nothing for fp32."""
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _epoch_loader(self) -> DataLoader:
        seed = self.config.train.seed * 100_003 + self.epoch
        # Rank 0 (and a single process) draws exactly as before; other ranks augment with their own stream.
        torch.manual_seed(seed + self.group.rank * 7_919)
        apply_freezing(self.config, self.model, self.epoch)
        for term in (self.criterion.modules() if self.criterion is not None else []):
            if hasattr(term, "set_epoch"):  # scheduled losses (e.g. region_boundary) follow the epoch
                term.set_epoch(self.epoch)
        generator = torch.Generator().manual_seed(seed)
        self.batches = ShardedBatches(self.data.train, self.config.data.batch_size, self.task.drop_last, generator,
                                      rank=self.group.rank, world_size=self.group.world_size,
                                      accumulate=self.config.train.accumulate)
        self.micro_index = 0
        return DataLoader(self.data.train, batch_sampler=self.batches, num_workers=self.config.data.num_workers,
                          generator=generator, collate_fn=self.data.collate)

    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    def running_loss(self) -> float:
        return self.running["loss"] / max(self.running["count"], 1)

    # -- the loop --
    def fit(self) -> Path:
        try:
            return self._fit()
        finally:
            shutdown(self.group)

    def _fit(self) -> Path:
        self._setup()
        budget = self.config.train.max_minutes
        self.deadline = clock() + budget * 60 if budget is not None else None
        self._call("on_train_start")
        installed, previous = self._catch_sigterm()
        try:
            self._loop()
        except BaseException:
            self._stop_display()
            self._remove_unfinished_run()
            raise
        finally:
            if installed:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        self._call("on_train_end")
        if self.time_up and self.group.is_main:
            console.print(f"stopped at the time budget (train.max_minutes={budget:g}) after {self.step} steps "
                          f"of {self.total_steps}; best/ and last_model/ are written, continue with --resume",
                          highlight=False, soft_wrap=True)
        if self.early_stopped and self.step < self.total_steps and self.group.is_main:
            console.print(f"stopped early after {self.step} steps of {self.total_steps}: {self.monitor} did not "
                          f"improve for {self.stale_validations} validations (train.early_stop_patience="
                          f"{self.config.train.early_stop_patience}; best {self.best:.6g}); best/ and last_model/ "
                          "are written", highlight=False, soft_wrap=True)
        return self.out_dir

    def _catch_sigterm(self) -> tuple[bool, Any]:
        """SIGTERM (schedulers, ``docker stop``) stops training like Ctrl-C, after the current step and a
        checkpoint; a second SIGTERM stops at once. Installed only while training, in the main thread;
        returns whether it was installed and the handler it replaced."""
        if threading.current_thread() is not threading.main_thread():
            return False, None

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.stop_signal is not None:
                raise TrainingStopped(f"terminated (second SIGTERM) at step {self.step}; the last checkpoint in "
                                      f"{self.state_path} is intact; continue with --resume")
            self.stop_signal = "SIGTERM"

        return True, signal.signal(signal.SIGTERM, on_sigterm)

    def _stop_now(self, checkpointed: bool) -> None:
        """Act on a SIGTERM received during the last step: checkpoint (unless just done) and stop."""
        if self.stop_signal is None:
            return
        if not checkpointed:
            self._checkpoint()
        raise TrainingStopped(f"terminated ({self.stop_signal}) at step {self.step}: checkpoint written to "
                              f"{self.state_path}; continue with --resume")

    def _out_of_time(self) -> bool:
        """Whether the time budget is spent. Under torchrun the processes agree (on this and on a SIGTERM
        that reached any of them), so that all stop after the same step."""
        out = self.deadline is not None and clock() >= self.deadline
        if not self.group.enabled:
            return out
        out_anywhere, stop_anywhere = all_reduce_values([out, self.stop_signal is not None], self.group, "max")
        if stop_anywhere and self.stop_signal is None:
            self.stop_signal = "SIGTERM"
        return bool(out_anywhere)

    def _checkpoint(self) -> None:
        """Write ``last.safetensors`` (rank 0's hooks). Under torchrun every process takes part: the RNG
        states of all are saved, and the running loss sums are gathered on rank 0, which saves them."""
        if self.group.enabled:
            self.rank_rng_states = gather_rng_states(self.group)
            self.running = self._running_of_all_processes()
            if not self.group.is_main:
                self.running = {key: 0.0 for key in self.running}
        self._call("on_checkpoint")

    def _running_of_all_processes(self) -> dict[str, float]:
        keys = sorted(self.running)
        return dict(zip(keys, all_reduce_values([self.running[k] for k in keys], self.group), strict=True))

    def _remove_unfinished_run(self) -> None:
        """A run that fails before its first checkpoint leaves nothing behind (only what it created goes)."""
        if self.resume or self.checkpointed or not self.created:
            return
        for path in reversed(self.created):
            if path == self.out_dir:
                try:
                    path.rmdir()  # only if empty: anything else in it is not this run's
                except OSError:
                    pass
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _loop(self) -> None:
        train_cfg = self.config.train
        if self._patience_spent():  # resumed from a run that had stopped early: nothing left to do
            self.early_stopped = True
            return
        while self.step < self.total_steps:
            batches = iter(self._epoch_loader())
            for _ in range(self.epoch_step * train_cfg.accumulate):  # resuming inside this epoch: replay it
                next(batches)
            self.micro_index = self.epoch_step * train_cfg.accumulate
            if self.rng_after_skip is not None:
                torch.set_rng_state(self.rng_after_skip)
                self.rng_after_skip = None
            started = time.perf_counter()
            self.model.train()
            while self.epoch_step < self.steps_per_epoch and self.step < self.total_steps:
                sizes = self.batches.micro_batch_sizes(self.epoch_step)
                micro = [batch for batch in (next(batches, None) for _ in sizes) if batch is not None]
                if len(micro) < len(sizes):
                    break
                self._train_step(micro, sizes)
                end_of_epoch = self.epoch_step >= self.steps_per_epoch
                finished = self.step >= self.total_steps
                if end_of_epoch or finished:
                    break
                checkpointed = False
                if self._out_of_time():
                    self.time_up = True
                    self._validate_and_log(started, end_of_epoch=False)
                    return
                if train_cfg.val_every_steps and self.step % train_cfg.val_every_steps == 0:
                    self._validate_and_log(started, end_of_epoch=False)
                    if self.early_stopped:
                        return
                    started = time.perf_counter()
                    checkpointed = True
                elif train_cfg.checkpoint_every_steps and self.step % train_cfg.checkpoint_every_steps == 0:
                    self._checkpoint()
                    checkpointed = True
                self._stop_now(checkpointed)
            finished = self.step >= self.total_steps
            self.time_up = not finished and self._out_of_time()
            if train_cfg.val_every_steps:
                validate = self.step % train_cfg.val_every_steps == 0 or finished or self.time_up
            else:
                validate = (self.epoch + 1) % train_cfg.val_every == 0 or finished or self.time_up
            self._validate_and_log(started, end_of_epoch=self.epoch_step >= self.steps_per_epoch, validate=validate)
            if self.time_up or self.early_stopped:
                return
            if not finished:
                self._stop_now(checkpointed=True)

    def _stop_display(self) -> None:
        for hook in self.hooks:
            if isinstance(hook, ProgressDisplay):
                hook.on_train_end(self)

    def _batch_files(self) -> str:
        seen = getattr(self, "batches", None)
        position = getattr(self, "micro_index", self.epoch_step)
        if seen is None or position >= len(seen.seen):
            return "the data cannot name this batch's files"
        names = item_names(self.data.train, seen.seen[position])
        if names is None:
            return f"the data cannot name this batch's files (items {seen.seen[position]} of the training set)"
        return "batch files: " + ", ".join(names)

    def _micro_batch_loss(self, batch: Any) -> Any:
        """The task's loss of one micro-batch, in the configured precision, its failures in one line."""
        try:
            with self.autocast():
                result = compute_loss(self.task, self.train_model, batch, self.criterion, self.device)
        except torch.OutOfMemoryError:
            raise PixelsegError(f"out of memory on {self.device} at step {self.step + 1}; lower data.batch_size "
                                "or the image size") from None
        except RuntimeError as err:
            if self.step != self.first_step:
                raise
            # At the first step a RuntimeError is the model refusing the data (channels, sizes, classes).
            raise PixelsegError(f"model '{self.config.model.name}' cannot take the data's batches "
                                f"({_first_line(err)}); check model.in_channels and model.kwargs against "
                                f"data '{self.config.data.name}'") from None
        if not torch.isfinite(result.total):
            parts = ", ".join(f"{name}={float(value):.4g}" for name, value in result.parts.items()) or "none"
            kept = f"the last good checkpoint is kept in {self.state_path}" if self.state_path.exists() else \
                "no checkpoint was written yet"
            raise PixelsegError(f"the loss became {result.total.item()} at step {self.step + 1} (loss parts: "
                                f"{parts}; {self._batch_files()}); {kept}; lower optim.lr or check those files")
        return result

    def _train_step(self, micro: list[Any], sizes: list[int]) -> None:
        """One optimizer step over ``micro`` (this process's micro-batches; ``sizes``: the images of each
        over all processes). The gradient is that of the mean over the step's images: each micro-batch's
        loss is weighted by its share of them, and DDP averages the processes' gradients once, at the last."""
        self._call("on_step_start")
        self.optimizer.zero_grad(set_to_none=True)
        total_size = sum(sizes)
        loss, count, parts = 0.0, 0, {}
        for index, (batch, size) in enumerate(zip(micro, sizes, strict=True)):
            last = index == len(micro) - 1
            syncing = contextlib.nullcontext() if last or not self.group.enabled else self.train_model.no_sync()
            with syncing:
                result = self._micro_batch_loss(batch)
                weight = size / total_size
                total = result.total if len(micro) == 1 else result.total * weight
                (self.scaler.scale(total) if self.scaler is not None else total).backward()
            self.micro_index += 1
            loss += float(result.total.detach()) * weight
            count += result.count
            for name, value in result.parts.items():
                parts[name] = parts.get(name, 0.0) + float(value.detach()) * weight
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.config.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        self.epoch_step += 1
        self.running["loss"] = self.running["loss"] + loss * count
        self.running["count"] = self.running["count"] + count
        for name, value in parts.items():
            self.running[f"part:{name}"] = self.running.get(f"part:{name}", 0.0) + value
        self.running["steps"] = self.running.get("steps", 0.0) + 1
        self._call("on_step_end", loss, parts)

    def _validate_and_log(self, started: float, *, end_of_epoch: bool, validate: bool = True) -> None:
        if self.group.enabled:  # the row shows the loss over every process's images
            self.running = self._running_of_all_processes()
        steps = max(self.running.get("steps", 0.0), 1)
        row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step,
                               "lr": self.optimizer.param_groups[0]["lr"], "train_loss": self.running_loss(),
                               **{k[5:]: v / steps for k, v in self.running.items() if k.startswith("part:")},
                               "seconds": round(time.perf_counter() - started, 2)}
        self.running = {"loss": 0.0, "count": 0.0}
        if validate:
            self.task.prepare_evaluation(self.model, self.data, seed=self.config.train.seed + 7919 + self.step,
                                         batches=self._precise_bn_batches(),
                                         batch_size=self.config.data.batch_size)
            scores = evaluate_model(self.task, self.model, self.val_loader, self.data.info, self.device)
            self.model.train()
            row.update({f"val_{k}": v for k, v in scores.items() if not isinstance(v, list)})
            self._judge(scores)
            self._call("on_validation", scores)
        if end_of_epoch:
            self.epoch += 1
            self.epoch_step = 0
        self.history.append(row)
        self._checkpoint()
        self._call("on_row", row)

    def _judge(self, scores: dict[str, Any]) -> None:
        """Whether the monitored score improved (``best`` kept), the validations since it last did, and
        whether that is the patience of early stopping. Every process judges the same all-reduced scores."""
        score = scores.get(self.monitor)
        if score is None or isinstance(score, list):
            names = [k for k, v in scores.items() if not isinstance(v, list)]
            raise PixelsegError(f"train.monitor '{self.monitor}' is not a metric{closest(self.monitor, names)}")
        self.best, self.stale_validations, self.improved = judged(score, self.best, self.stale_validations,
                                                                 self.monitor_mode)
        self.early_stopped = self._patience_spent()

    def _judge_history_again_if_the_monitor_changed(self, state: dict[str, Any]) -> None:
        """On ``--resume`` with another ``train.monitor`` or ``monitor_mode`` than the checkpoint was judged by,
        ``best`` and the patience count are worked out again from the logged validations (comparing them with
        the old monitor's would be meaningless). ``best/`` keeps the old monitor's choice until the new one
        improves. Checkpoints written before the monitor was saved are compared by their figures."""
        saved = (state.get("monitor"), state.get("monitor_mode"))
        if saved == (self.monitor, self.monitor_mode):
            return
        key = f"val_{self.monitor}"
        validations = [row for row in self.history if any(k.startswith("val_") for k in row)]
        if any(key not in row for row in validations):
            logged = sorted({k[4:] for row in validations for k in row if k.startswith("val_")})
            raise PixelsegError(f"train.monitor '{self.monitor}' was not logged by this run's validations, so "
                                f"--resume cannot judge them by it{closest(self.monitor, logged)}")
        best, stale = (-math.inf if self.monitor_mode == "max" else math.inf), 0
        for row in validations:
            best, stale, _ = judged(row[key], best, stale, self.monitor_mode)
        if (best, stale) == (self.best, self.stale_validations):
            return  # the same judgement: an old checkpoint of the same monitor
        if self.group.is_main:
            old = f"{saved[0]} ({saved[1]})" if saved[0] else "another monitor"
            console.print(f"train.monitor {self.monitor} ({self.monitor_mode}) replaces {old}: best {best:.6g} and "
                          f"{stale} validations without improvement, from the {len(validations)} logged; best/ "
                          f"keeps the earlier choice until {self.monitor} improves", highlight=False, soft_wrap=True)
        self.best, self.stale_validations = best, stale

    def _patience_spent(self) -> bool:
        patience = self.config.train.early_stop_patience
        return patience is not None and self.stale_validations >= patience

    def _precise_bn_batches(self) -> int:
        value = self.config.train.precise_bn_batches
        return self.task.precise_bn_batches if value is None else value


def judged(score: float, best: float, stale: int, mode: str) -> tuple[float, int, bool]:
    """One validation's ``score`` against the ``best`` so far: the new best, the validations in a row without
    improvement, and whether it improved (strictly better; ``mode`` is ``max`` or ``min``)."""
    improved = score > best if mode == "max" else score < best
    return (score, 0, True) if improved else (best, stale + 1, False)


def monitor_mode(monitor: str, mode: str | None) -> str:
    """``train.monitor_mode``, or from the monitor's name: errors and losses are better lower."""
    if mode is not None:
        return mode
    return "min" if monitor.endswith(("error", "loss")) else "max"


def train(config: Config, *, resume: bool = False, quiet: bool = False) -> Path:
    """Train as configured; return the run directory. ``resume`` continues from ``last.safetensors``."""
    return Trainer(config, resume=resume, quiet=quiet).fit()


def plot_curves(out_dir: Path, history: list[dict[str, Any]], monitor: str) -> None:
    """``curves.png``: training loss (left) and validation scores (right) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [row["train_loss"] for row in history], marker="o", label="train loss")
    left.set_xlabel("step")
    left.legend()
    for key in dict.fromkeys((f"val_{monitor}", "val_mean_iou", "val_pixel_accuracy", "val_mean_dice",
                              "val_mask_AP", "val_box_AP")):
        values = [row.get(key) for row in history]
        if any(v is not None and v == v for v in values):
            right.plot(steps, [v if v is not None else float("nan") for v in values], marker="o", label=key)
    right.set_xlabel("step")
    if right.lines:  # no validation yet: nothing to label
        right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write_bytes(out_dir / "curves.png", buffer.getvalue())
