"""The trainer: AdamW or SGD with poly learning rate, validation every epoch, atomic checkpoints, exact
resume, rich progress bars, a CSV log and PNG curves.

Run directory (``train.out_dir``)::

    config.yaml          the resolved configuration
    last.safetensors     full training state (model, optimizer, RNG, epoch, history) — for --resume
    best/                the best model so far: config.json + model.safetensors (+ metrics.json)
    log.csv, curves.png  one row / point per epoch

Exact resume: at the start of epoch ``e`` the RNG is re-seeded from ``(seed, e)`` and the learning rate
is a function of the global step, so continuing from the epoch-``e`` checkpoint replays precisely what
an uninterrupted run would do.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.build import DatasetInfo, build_datasets, dataset_info
from ..errors import PixelsegError, closest
from ..losses import build_loss
from ..metrics import ConfusionMatrix
from ..models.base import SegmentationOutput
from ..models.registry import create_model
from ..io.checkpoint import atomic_write_bytes, load_training_state, save_training_state
from .config import Config, config_to_dict
from ..inference.forward import forward_whole

console = Console(stderr=True)


def build_model_for(config: Config, info: DatasetInfo) -> nn.Module:
    model_cfg = config.model
    in_channels = model_cfg.in_channels or info.in_channels
    model = create_model(model_cfg.name, num_classes=info.num_classes, in_channels=in_channels,
                         encoder=model_cfg.encoder, encoder_weights=model_cfg.encoder_weights,
                         **model_cfg.kwargs)
    model.pixelseg_config["data"] = {**asdict(info), "dataset": asdict(config.data)}
    return model


CLASS_WEIGHTINGS = ("median_frequency", "enet")


def loss_terms(config: Config) -> list[dict[str, Any]]:
    """The config's loss terms; ``class_weights: median_frequency`` or ``enet`` is computed from the
    training split (as ``pixelseg stats`` prints it)."""
    terms = []
    for term in config.loss:
        params = dict(term.params)
        weighting = params.get("class_weights")
        if isinstance(weighting, str):
            if weighting not in CLASS_WEIGHTINGS:
                raise PixelsegError(f"loss '{term.name}': class_weights '{weighting}' is not a weighting"
                                    f"{closest(weighting, CLASS_WEIGHTINGS)} (or give a list of numbers)")
            from ..data.stats import dataset_stats

            stats = dataset_stats(config.data)
            weights = stats.median_frequency_weights() if weighting == "median_frequency" else stats.enet_weights()
            params["class_weights"] = [float(w) for w in weights]
        terms.append({"name": term.name, "weight": term.weight, **params})
    return terms


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    raise PixelsegError(f"unknown optimizer '{optim.name}' (adamw or sgd)")


def poly_lr(base_lr: float, step: int, total_steps: int, power: float, warmup_steps: int = 0) -> float:
    """``base_lr · (1 − step/total)^power`` (DeepLab's poly schedule), with optional linear warm-up."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * max(0.0, 1 - step / max(total_steps, 1)) ** power


def crop_target_to(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre-crop the target to a valid-convolution output (U-Net trains on the centre)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    top = (target.shape[-2] - size[0]) // 2
    left = (target.shape[-1] - size[1]) // 2
    return target[..., top:top + size[0], left:left + size[1]]


def compute_loss(output: Tensor | SegmentationOutput, target: Tensor, criterion: nn.Module) -> Tensor:
    """Main loss plus weighted auxiliary losses (aux logits upsampled bilinearly to the main size)."""
    main = output.out if isinstance(output, SegmentationOutput) else output
    target = crop_target_to(target, tuple(main.shape[-2:]))
    loss = criterion(main, target)
    if isinstance(output, SegmentationOutput):
        for weight, aux in zip(output.aux_weights, output.aux, strict=True):
            if aux.shape[-2:] != main.shape[-2:]:
                aux = F.interpolate(aux, size=main.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + weight * criterion(aux, target)
    return loss


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, num_classes: int, ignore_index: int,
                   device: torch.device, progress: Progress | None = None) -> dict[str, Any]:
    """Accumulate one confusion matrix over the loader; return all scores."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index)
    task = progress.add_task("validate", total=len(loader), loss="") if progress else None
    for images, targets in loader:
        logits = forward_whole(model, images.to(device))
        matrix.update(logits.argmax(1).cpu(), targets)
        if progress is not None:
            progress.advance(task)
    if progress is not None:
        progress.remove_task(task)
    return matrix.compute()


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=True)


def _write_log(out_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    columns = list(history[0])
    for row in history:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out_dir / "log.csv", buffer.getvalue().encode())
    _plot_curves(out_dir, history)


def _plot_curves(out_dir: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    left.set_xlabel("epoch")
    left.legend()
    for key in ("val_mean_iou", "val_pixel_accuracy", "val_mean_dice"):
        values = [row.get(key) for row in history]
        if any(v is not None and v == v for v in values):
            right.plot(epochs, values, marker="o", label=key)
    right.set_xlabel("epoch")
    if right.lines:  # no validation yet (train.val_every > epochs so far): nothing to label
        right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write_bytes(out_dir / "curves.png", buffer.getvalue())


def train(config: Config, *, resume: bool = False, quiet: bool = False) -> Path:
    """Train as configured; return the run directory. ``resume`` continues from ``last.safetensors``."""
    out_dir = Path(config.train.out_dir)
    state_path = out_dir / "last.safetensors"
    if state_path.exists() and not resume:
        raise PixelsegError("the run directory already holds a checkpoint; pass --resume to continue it "
                            "or set train.out_dir to a new directory", out_dir)
    if resume and not state_path.exists():
        raise PixelsegError("nothing to resume: no last.safetensors here", out_dir)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = torch.device(config.train.device)
    torch.manual_seed(config.train.seed)

    info = dataset_info(config.data)
    train_set, val_set = build_datasets(config.data, info)
    model = build_model_for(config, info).to(device)
    criterion = build_loss(loss_terms(config), ignore_index=info.ignore_index).to(device)
    optimizer = build_optimizer(config, model)

    steps_per_epoch = math.ceil(len(train_set) / config.data.batch_size)
    if config.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.train.epochs
    history: list[dict[str, Any]] = []
    start_epoch, step, best = 0, 0, -math.inf
    if resume:
        state = load_training_state(state_path, model=model, optimizer=optimizer)
        start_epoch, step, best, history = state["epoch"], state["step"], state["best"], state["history"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False).encode())

    val_loader = DataLoader(val_set, batch_size=config.data.val_batch_size, shuffle=False,
                            num_workers=config.data.num_workers)
    progress = _progress()
    progress.disable = quiet
    with progress:
        for epoch in range(start_epoch, config.train.epochs):
            torch.manual_seed(config.train.seed * 100_003 + epoch)
            for term in criterion.modules():  # scheduled losses (e.g. region_boundary) follow the epoch
                if hasattr(term, "set_epoch"):
                    term.set_epoch(epoch)
            generator = torch.Generator().manual_seed(config.train.seed * 100_003 + epoch)
            loader = DataLoader(train_set, batch_size=config.data.batch_size, shuffle=True, drop_last=False,
                                num_workers=config.data.num_workers, generator=generator)
            model.train()
            task = progress.add_task(f"epoch {epoch + 1}/{config.train.epochs}", total=steps_per_epoch, loss="")
            loss_sum, seen, started = 0.0, 0, time.perf_counter()
            for batch_index, (images, targets) in enumerate(loader):
                if batch_index >= steps_per_epoch:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = poly_lr(config.optim.lr, step, total_steps, config.optim.poly_power,
                                          config.optim.warmup_steps)
                images, targets = images.to(device), targets.to(device)
                loss = compute_loss(model(images), targets, criterion)
                if not torch.isfinite(loss):
                    raise PixelsegError(f"the loss became {loss.item()} at step {step}; lower optim.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * images.shape[0]
                seen += images.shape[0]
                progress.update(task, advance=1, loss=f"loss {loss_sum / seen:.4f}")
            progress.remove_task(task)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                                   "train_loss": loss_sum / max(seen, 1),
                                   "seconds": round(time.perf_counter() - started, 2)}
            is_last = epoch + 1 == config.train.epochs
            if (epoch + 1) % config.train.val_every == 0 or is_last:
                scores = evaluate_model(model, val_loader, info.num_classes, info.ignore_index, device, progress)
                row.update({f"val_{k}": v for k, v in scores.items() if not isinstance(v, list)})
                score = scores.get(config.train.monitor)
                if score is None:
                    raise PixelsegError(f"train.monitor '{config.train.monitor}' is not a metric")
                if score > best:
                    best = score
                    model.save_pretrained(out_dir / "best")
                    atomic_write_bytes(out_dir / "best" / "metrics.json",
                                       json.dumps({"epoch": epoch + 1, **scores}, indent=2).encode())
            history.append(row)
            save_training_state(state_path, model=model, optimizer=optimizer,
                                info={"epoch": epoch + 1, "step": step, "best": best, "history": history})
            _write_log(out_dir, history)
            if not quiet:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                console.print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v}" for k, v in shown.items()
                                                                 if k != "epoch"))
    model.save_pretrained(out_dir / "last_model")
    return out_dir
