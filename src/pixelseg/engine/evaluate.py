"""``pixelseg evaluate``: a saved model of any task on a split of its dataset, scored by the task's evaluator
(semantic and volumetric: one confusion matrix; instance: COCO AP).

Under ``torchrun`` each process scores every ``WORLD_SIZE``-th image and the evaluator's ``all_reduce``
merges them, so every process returns the single-process scores."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.build import build_eval_dataset, collate_for
from ..data.config import DataConfig
from ..errors import PixelsegError
from ..inference.tta import TestTimeAugmented, check_scales
from ..io.checkpoint import atomic_write_bytes
from ..io.config import build_typed
from ..io.saved_model import resolve_model_dir
from ..models.pretrained import from_pretrained
from ..tasks.base import Task, get_task, model_info
from .distributed import EvaluationShard, ProcessGroup, init_distributed, shutdown
from .train import evaluate_model


def task_of(model: nn.Module) -> Task:
    """The task a saved model was trained for (``semantic`` for models saved before tasks were recorded)."""
    config = getattr(model, "pixelseg_config", {})
    name = config.get("task")
    if name is None:
        data = config.get("data") or {}
        name = "volumetric" if data.get("spatial_dims") == 3 else "semantic"
    return get_task(name)


def saved_data_config(model: nn.Module, model_dir: Path) -> DataConfig:
    dataset = (model.pixelseg_config.get("data") or {}).get("dataset")
    if not dataset:
        raise PixelsegError("the model config does not name its dataset", model_dir / "config.json")
    try:
        return build_typed(DataConfig, dataset, "data")
    except PixelsegError as err:
        raise PixelsegError(str(err), model_dir / "config.json") from None


def evaluate(model_path: str | Path, *, split: str | None = None, data_overrides: dict[str, Any] | None = None,
             device: str = "cpu", batch_size: int = 1, tta_scales: Sequence[float] | None = None,
             tta_flip: bool = False) -> dict[str, Any]:
    """Scores of a saved model on ``split`` (default: the validation split of its dataset).

    ``tta_scales``/``tta_flip`` average logits over scales and flips (``pixelseg.inference.tta``) for the
    tasks that allow it; ``data_overrides`` change keys of the saved data config (e.g. a moved ``root``).
    """
    model_dir = resolve_model_dir(model_path)
    group, chosen = init_distributed(device)
    try:
        return _evaluate(model_dir, split, data_overrides, chosen, batch_size, tta_scales, tta_flip, group)
    finally:
        shutdown(group)


def _evaluate(model_dir: Path, split: str | None, data_overrides: dict[str, Any] | None, device: torch.device,
              batch_size: int, tta_scales: Sequence[float] | None, tta_flip: bool,
              group: ProcessGroup) -> dict[str, Any]:
    model = from_pretrained(model_dir).to(device).eval()
    task = task_of(model)
    task.check_evaluation_options(tta_scales, tta_flip)
    info = model_info(model, model_dir)
    data_config = saved_data_config(model, model_dir)
    if data_overrides:
        values = {**dataclasses.asdict(data_config), **data_overrides}
        data_config = build_typed(DataConfig, values, "data")  # unknown keys and bad types refused
    split = split or data_config.val_split
    try:
        dataset = build_eval_dataset(data_config, info, split)
    except (ValueError, KeyError) as err:  # a dataset refusing the split name
        raise PixelsegError(f"--split {split}: not a split of dataset '{data_config.name}' "
                            f"({str(err).strip(chr(39))})") from None
    sampler = EvaluationShard(dataset, group.rank, group.world_size) if group.enabled else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                        collate_fn=collate_for(data_config))
    tta = {"scales": list(check_scales(tta_scales if tta_scales is not None else (1.0,))), "flip": tta_flip}
    forward = TestTimeAugmented(model, tta["scales"], tta_flip) if tta_scales is not None or tta_flip else model
    forward = task.inference_forward(model, forward, info)
    scores = evaluate_model(task, model, loader, info, device, forward=forward)
    return {"model": str(model_dir), "task": task.name, "split": split, "images": len(dataset),
            "classes": list(info.classes), "tta": tta, **scores}


def write_report(scores: dict[str, Any], path: str | Path) -> None:
    atomic_write_bytes(path, json.dumps(scores, indent=2).encode())
