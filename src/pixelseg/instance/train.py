"""Training loop for instance-segmentation configs (``task: instance``).

A config is YAML with four sections (every key has a default; see ``configs/instance/``)::

    task: instance
    model:   {backbone: mobilenet_v3_large, fpn_channels: 64, ...}   # build_mask_rcnn arguments
    data:    {kind: synthetic | coco | folder, train: {...}, val: {...}}
    train:   {steps: 3000, batch_size: 4, lr: 0.02, ..., out_dir: runs/x}

Command-line overrides are ``section.key=value`` strings (the value is parsed as YAML). The loop is
SGD with momentum, linear warm-up and a step decay at 75 % and 90 % of the steps (the schedule of
the paper, shortened; ``optimizer: adamw`` swaps in AdamW for short runs from scratch); it writes an atomic safetensors training state every ``checkpoint_every``
steps (``--resume`` continues from it exactly), COCO metrics on the validation split every
``eval_every`` steps (after recomputing the BatchNorm statistics, see
:func:`recompute_batchnorm_statistics`), and at the end the model as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import PixelsegError
from ..data.instances import CocoInstances, InstanceMaskFolder, SyntheticInstances, Target, collate_detection

DEFAULTS: dict[str, Any] = {
    "task": "instance",
    "model": {"backbone": "mobilenet_v3_large"},
    "data": {"kind": "synthetic", "train": {}, "val": {}},
    "train": {"steps": 1000, "batch_size": 4, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
              "warmup_steps": 100, "grad_clip": 10.0, "hflip": True, "seed": 0, "num_workers": 0,
              "log_every": 20, "precise_bn_batches": 50, "eval_every": 500, "checkpoint_every": 100, "out_dir": "runs/instance",
              "threads": None},
}
_SECTIONS = ("model", "data", "train")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(config_path: Path, overrides: list[str]) -> dict[str, Any]:
    """The config file merged over the defaults, then the ``a.b=value`` overrides."""
    from ..engine.config import apply_overrides, read_yaml

    config_path = Path(config_path)
    loaded = read_yaml(config_path)
    if loaded.get("task", "instance") != "instance":
        raise PixelsegError(f"task is '{loaded.get('task')}', expected 'instance'", config_path)
    unknown = set(loaded) - {"task", *_SECTIONS}
    if unknown:
        raise PixelsegError(f"unknown top-level key(s) {', '.join(sorted(unknown))} "
                            f"(expected task, {', '.join(_SECTIONS)})", config_path)
    config = apply_overrides(_merge(DEFAULTS, loaded), list(overrides))
    for key in sorted(set(config["train"]) - set(DEFAULTS["train"])):
        close = difflib.get_close_matches(key, DEFAULTS["train"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PixelsegError(f"unknown train key '{key}'{hint}", config_path)
    config["_path"] = str(config_path)
    return config


def build_dataset(config: dict[str, Any], split: str) -> Dataset:
    """The ``split`` ("train" or "val") dataset described by ``config['data']``."""
    data = config["data"]
    options = dict(data.get(split) or {})
    kind = data.get("kind", "synthetic")
    where = config.get("_path")
    if "root" in data:  # one folder for both splits (Penn-Fudan layout), unless a split names its own
        options.setdefault("root", data["root"])
    try:
        if kind == "synthetic":
            options.setdefault("split", "train" if split == "train" else "val")
            options.setdefault("length", 2000 if split == "train" else 100)
            return SyntheticInstances(**options)
        if kind == "coco":
            return CocoInstances(**options)
        if kind == "folder":
            return InstanceMaskFolder(**options)
    except TypeError as err:
        raise PixelsegError(f"data.{split}: {err}", where) from None
    raise PixelsegError(f"unknown data.kind '{kind}' (choose synthetic, coco or folder)", where)


def horizontal_flip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror an image and its instances (masks and boxes) left to right."""
    width = image.shape[-1]
    flipped = dict(target)
    flipped["masks"] = target["masks"].flip(-1)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    flipped["boxes"] = boxes
    return image.flip(-1), flipped


def _batches(dataset: Dataset, batch_size: int, seed: int, num_workers: int,
             start_epoch: int) -> Iterator[tuple[list[Tensor], list[Target]]]:
    epoch = start_epoch
    while True:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                            num_workers=num_workers, collate_fn=collate_detection, drop_last=True)
        yield from loader
        epoch += 1


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterator[tuple[list[Tensor], list[Target]]],
                                   num_batches: int) -> None:
    """Precise BatchNorm: set every BN layer's running mean and variance to their average over
    ``num_batches`` training batches under the current weights (Wu & Johnson, "Rethinking 'Batch' in
    BatchNorm", 2021, arXiv:2105.07576).

    Trained from scratch with a fast-moving optimiser and small batches, the exponential running
    averages lag behind the weights so far that eval mode detects nothing; the batch statistics are
    fine. Only the backbone (with its FPN) holds BatchNorm layers, so only it is run.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_batches <= 0:
        return
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    model.train()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    for _ in range(num_batches):
        images, _ = next(batches)
        image_list, _ = model.transform(images)
        model.backbone(image_list.tensors)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


def learning_rate(step: int, base_lr: float, steps: int, warmup: int) -> float:
    """Linear warm-up from 1/1000, then x0.1 at 75 % and again at 90 % of the run."""
    if step < warmup:
        return base_lr * (0.001 + (1 - 0.001) * step / warmup)
    return base_lr * (0.1 ** ((step >= math.floor(0.75 * steps)) + (step >= math.floor(0.9 * steps))))


def train(config: dict[str, Any], *, resume: bool = False) -> dict[str, Any]:
    """Train the configured Mask R-CNN; returns the final summary (also written to ``summary.json``)."""
    from ..io.checkpoint import atomic_write_bytes, load_training_state, save_training_state
    from .evaluate import evaluate_model
    from ..models.mask_rcnn import build_mask_rcnn, save_instance_model

    settings = config["train"]
    if settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    out_dir = Path(settings["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings["seed"])
    random.seed(settings["seed"])
    train_set, val_set = build_dataset(config, "train"), build_dataset(config, "val")
    if len(train_set) < settings["batch_size"]:
        raise PixelsegError(f"the training set has {len(train_set)} images, fewer than batch_size "
                            f"{settings['batch_size']}", config.get("_path"))
    model_options = dict(config["model"])
    try:
        model = build_mask_rcnn(len(train_set.class_names), class_names=list(train_set.class_names),
                                **model_options)
    except (PixelsegError, TypeError) as err:
        raise PixelsegError(f"model: {err}", config.get("_path")) from None
    model.pixelseg_config["category_ids"] = list(train_set.category_ids)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if settings["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=settings["lr"], momentum=settings["momentum"],
                                    weight_decay=settings["weight_decay"])
    elif settings["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"])
    else:
        raise PixelsegError(f"unknown train.optimizer '{settings['optimizer']}' (sgd or adamw)", config.get("_path"))
    state_path = out_dir / "last.safetensors"
    step, history = 0, []
    if resume:
        if not state_path.is_file():
            raise PixelsegError("--resume: no training state to resume from", state_path)
        info = load_training_state(state_path, model=model, optimizer=optimizer)
        step, history = int(info["step"]), list(info.get("history", []))
    atomic_write_bytes(out_dir / "train_config.yaml",
                       yaml.safe_dump({k: v for k, v in config.items() if k != "_path"}).encode())

    steps, batch_size = int(settings["steps"]), int(settings["batch_size"])
    per_epoch = len(train_set) // batch_size
    batches = _batches(train_set, batch_size, settings["seed"], settings["num_workers"], step // per_epoch)
    for _ in range(step % per_epoch):  # resume inside an epoch at the same batch
        next(batches)
    flip_rng = random.Random(settings["seed"] + step)
    log_path = out_dir / "log.jsonl"
    started, running = time.perf_counter(), {}
    model.train()
    while step < steps:
        images, targets = next(batches)
        if settings["hflip"]:
            pairs = [horizontal_flip(i, t) if flip_rng.random() < 0.5 else (i, t)
                     for i, t in zip(images, targets, strict=True)]
            images, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        lr = learning_rate(step, settings["lr"], steps, settings["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = model(images, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise PixelsegError(f"loss became {total.item()} at step {step}; lower train.lr", config.get("_path"))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if settings["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(parameters, settings["grad_clip"])
        optimizer.step()
        step += 1
        for name, value in losses.items():
            running[name] = running.get(name, 0.0) + float(value.detach())
        if step % settings["log_every"] == 0 or step == steps:
            count = settings["log_every"] if step % settings["log_every"] == 0 else step % settings["log_every"]
            record = {"step": step, "lr": lr, "seconds": round(time.perf_counter() - started, 1),
                      **{k: round(v / count, 4) for k, v in running.items()}}
            running = {}
            print(json.dumps(record), flush=True)
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if step % settings["eval_every"] == 0 or step == steps:
            recompute_batchnorm_statistics(model, _batches(train_set, batch_size, settings["seed"] + 7919 + step,
                                                           0, 0), settings["precise_bn_batches"])
            metrics = evaluate_model(model, val_set)
            model.train()
            history.append({"step": step, **metrics})
            print(json.dumps({"step": step, "eval": metrics}), flush=True)
        if step % settings["checkpoint_every"] == 0 or step == steps:
            save_training_state(state_path, model=model, optimizer=optimizer,
                                info={"step": step, "history": history})
    save_instance_model(model, out_dir / "model")
    atomic_write_bytes(out_dir / "model" / "train_config.yaml",
                       yaml.safe_dump({k: v for k, v in config.items() if k != "_path"}).encode())
    summary = {"steps": steps, "train_seconds_this_session": round(time.perf_counter() - started, 1),
               "history": history, "final": history[-1] if history else {}}
    atomic_write_bytes(out_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def train_from_config(config_path: Path, overrides: list[str], resume: bool) -> None:
    """``pixelseg train CONFIG.yaml`` for configs with ``task: instance``."""
    train(load_config(Path(config_path), list(overrides)), resume=resume)
