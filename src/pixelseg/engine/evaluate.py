"""``pixelseg evaluate``: a saved model of any task on a split of its dataset, scored by the task's evaluator
(semantic and volumetric: one confusion matrix; instance: COCO AP).

Under ``torchrun`` each process scores every ``WORLD_SIZE``-th image and the evaluator's ``all_reduce``
merges them, so every process returns the single-process scores. With ``report``, the evaluator is wrapped to
keep one score per image too, and rank 0 alone writes ``report/index.html`` and ``report/report.md``
(:mod:`pixelseg.engine.report`)."""

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
from ..inference.runner import InferenceOptions, build_runner
from ..inference.tta import check_scales
from ..io.checkpoint import atomic_write_bytes
from ..io.config import build_typed
from ..io.saved_model import resolve_model_dir
from ..models.pretrained import from_pretrained
from ..tasks.base import Task, get_task, model_info
from .distributed import EvaluationShard, ProcessGroup, init_distributed, shutdown
from .report import Capture, PerImageScores, ReportInputs, displayable
from .report import write_report as write_html_report
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
             tta_flip: bool = False, tta_rotate: bool = False, report: bool | str | Path = False,
             report_samples: int = 4, refine: str | None = None, precision: str = "fp32",
             backend: str | None = None) -> dict[str, Any]:
    """Scores of a saved model on ``split`` (default: the validation split of its dataset).

    ``tta_scales``/``tta_flip``/``tta_rotate`` average logits over scales, the left-right flip and the quarter
    turns (``pixelseg.inference.tta``) for the tasks that allow it; ``data_overrides`` change keys of the saved
    data config (e.g. a moved ``root``).
    ``report``: ``True`` writes the HTML and Markdown report into the run folder's ``report/`` (the model
    folder's, when it is not in a run folder), a path writes it there; ``scores["report"]`` names the page
    (``scores["report_error"]`` says why, when it could not be written).
    ``report_samples``: how many best and how many worst images it shows.
    ``precision``/``backend`` (semantic models): score what ``pixelseg predict`` with the same options runs —
    bf16 autocast, the int8 graph, ONNX Runtime or OpenVINO (``pixelseg.inference.runner``); the default is eager
    fp32 (int8 defaults to ``auto``: the runtime its export timed fastest).
    """
    model_dir = resolve_model_dir(model_path)
    group, chosen = init_distributed(device)
    report_dir = None if report is False else default_report_dir(model_dir) if report is True else Path(report)
    try:
        return _evaluate(model_dir, split, data_overrides, chosen, batch_size, tta_scales, tta_flip, tta_rotate,
                         group, report_dir, report_samples, refine, precision, backend)
    finally:
        shutdown(group)


def run_folder(model_dir: Path) -> Path | None:
    """The training run a saved model belongs to (``RUN/best``, ``RUN/last_model``), if it does."""
    parent = model_dir.parent
    return parent if (parent / "log.csv").is_file() or (parent / "config.yaml").is_file() else None


def default_report_dir(model_dir: Path) -> Path:
    return (run_folder(model_dir) or model_dir) / "report"


def _evaluate(model_dir: Path, split: str | None, data_overrides: dict[str, Any] | None, device: torch.device,
              batch_size: int, tta_scales: Sequence[float] | None, tta_flip: bool, tta_rotate: bool,
              group: ProcessGroup, report_dir: Path | None = None, report_samples: int = 4,
              refine: str | None = None, precision: str = "fp32", backend: str | None = None) -> dict[str, Any]:
    model = from_pretrained(model_dir).to(device).eval()
    task = task_of(model)
    if refine is not None:  # --refine crf: the dense CRF after any semantic model, as a saved model.refine
        if refine != "crf" or task.name != "semantic":
            raise PixelsegError(f"--refine {refine}: only 'crf' (the dense CRF), after a semantic model")
        model.pixelseg_config["refine"] = {**(model.pixelseg_config.get("refine") or {}), "name": "crf"}
    task.check_evaluation_options(tta_scales, tta_flip, tta_rotate)
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
    tta = {"scales": list(check_scales(tta_scales if tta_scales is not None else (1.0,))), "flip": tta_flip,
           "rotate": tta_rotate}
    # The same runner as `pixelseg predict` with these options: eager fp32 (+ TTA) by default; bf16, the int8
    # graph or a runtime when asked (InferenceOptions.runtime: int8 runs "auto" unless a runtime is named)
    options = InferenceOptions(backend=backend or "torch", precision=precision, tta_scales=tta_scales,
                               tta_flip=tta_flip, tta_rotate=tta_rotate)
    options.check()
    runtime = {"precision": precision, "backend": options.runtime}
    if runtime != {"precision": "fp32", "backend": "torch"} and (task.name != "semantic" or device.type != "cpu"):
        raise PixelsegError(f"--precision/--backend: only semantic models on the CPU ({task.name} on "
                            f"{device.type} is scored in eager fp32)")
    forward = build_runner(model, model_dir, options, str(device))
    forward = task.inference_forward(model, forward, info)
    if report_dir is None:
        scores = evaluate_model(task, model, loader, info, device, forward=forward)
        return {"model": str(model_dir), "task": task.name, "split": split, "images": len(dataset),
                "classes": list(info.classes), "tta": tta, **runtime, **scores}
    evaluator = task.evaluator(info)
    recorder = PerImageScores(evaluator, list(sampler) if sampler is not None else range(len(dataset)),
                              info.num_classes, info.ignore_index)
    with torch.no_grad():
        for batch in loader:
            task.evaluate_batch(forward, batch, recorder, device)
    recorder.all_reduce()
    result = {"model": str(model_dir), "task": task.name, "split": split, "images": len(dataset),
              "classes": list(info.classes), "tta": tta, **runtime, **recorder.compute()}
    if group.rank == 0:
        collate = collate_for(data_config) or torch.utils.data.default_collate

        @torch.no_grad()
        def sample(index: int) -> tuple[Any, Any, Any]:
            """One image predicted again: (RGB image, ground truth, prediction) for the report's pictures."""
            capture = Capture()
            images, targets = collate([dataset[index]])
            task.evaluate_batch(forward, (images, targets), capture, device)
            normalised = task.name != "instance"  # detection models normalise inside
            picture = displayable(images[0], info.mean, info.std, normalised)
            if task.name == "instance":
                return picture, capture.target[0], {k: v.cpu() for k, v in capture.prediction[0].items()}
            truth, predicted = capture.target[0].cpu().numpy(), capture.prediction[0].cpu().numpy()
            if truth.ndim == 3:  # a volume: its middle slice
                truth, predicted = truth[truth.shape[0] // 2], predicted[predicted.shape[0] // 2]
            return picture, truth, predicted

        matrix = getattr(evaluator, "matrix", None)
        if matrix is None and hasattr(evaluator, "dataset"):
            matrix = evaluator.dataset.matrix  # volumes: the voxel confusion matrix
        inputs = ReportInputs(classes=list(info.classes), palette=[list(c) for c in info.palette],
                              confusion=matrix, records=recorder.records, samples=sample,
                              run_dir=run_folder(model_dir), count=report_samples)
        try:
            result["report"] = str(write_html_report(report_dir, result, inputs))
        except OSError as err:  # the scores still count: the caller reports the report's failure
            result["report_error"] = f"{err.filename or report_dir}: {err.strerror or err}"
    return result


def write_report(scores: dict[str, Any], path: str | Path) -> None:
    atomic_write_bytes(path, json.dumps(scores, indent=2).encode())
