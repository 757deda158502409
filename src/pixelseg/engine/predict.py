"""``pixelseg predict``: the files of every input, for a saved model of any task.

One loop for all tasks: the task's predictor lists the inputs and writes each one's files atomically; an
input that cannot be read or segmented is reported in one line and skipped, the others are still written,
and the command exits non-zero if any failed. Under ``torchrun`` every process predicts its share of the
files (``RANK``/``WORLD_SIZE``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL.Image import DecompressionBombError

from ..errors import PixelsegError
from ..inference.runner import InferenceOptions
from ..io.saved_model import resolve_model_dir
from ..models.pretrained import from_pretrained
from ..tasks.base import PredictOptions, model_info
from ..tasks.semantic import ImagePredictor
from .evaluate import task_of

if TYPE_CHECKING:
    from ..refiners.dense_crf import DenseCRFConfig

__all__ = ["InferenceOptions", "PredictReport", "predict", "shard_from_env", "total_failures"]


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the task's summary, one line per input
    predicted: int = 0  # inputs predicted (not failed)
    what: str = "images"  # what the inputs are: images or volumes


def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's ``RANK``/``WORLD_SIZE`` (``(0, 1)`` when run alone)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PixelsegError("RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank < world:
        raise PixelsegError(f"RANK {rank} is not in 0..WORLD_SIZE-1 ({world - 1})")
    return rank, world


def predict(model_path: str | Path, inputs: str | Path | Iterable[Path], out_dir: str | Path, *,
            device: str = "cpu", logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
            on_error: Callable[[str], None] | None = None, refine: str | None = None,
            options: InferenceOptions | None = None, shard: tuple[int, int] = (0, 1),
            crf: DenseCRFConfig | None = None, score_threshold: float = 0.5) -> PredictReport:
    """Predict every input with the saved model; return the files written and the one-line failures.

    Semantic: ``<stem>.png`` (index) and ``<stem>_overlay.png`` (``options``: backend, speed-ups, tiling,
    TTA, streaming; ``refine="crf"``: the dense CRF with parameters ``crf``; ``logits_fn`` replaces the
    logits computation). Volumetric: ``<stem>.npy``/``.tif``. Instance: overlays plus ``predictions.json``.
    ``shard=(rank, world)`` keeps every ``world``-th input from the ``rank``-th on.
    """
    model_dir = resolve_model_dir(model_path)
    model = from_pretrained(model_dir).to(device).eval()
    task = task_of(model)
    info = model_info(model, model_dir)
    predict_options = PredictOptions(device=device, inference=options, refine=refine, crf=crf,
                                     score_threshold=score_threshold)
    if logits_fn is not None:
        if task.name != "semantic":
            raise PixelsegError(f"a custom logits function applies to semantic models, not {task.name} ones")
        predict_options.inference = options or InferenceOptions()
        predictor = ImagePredictor(model, model_dir, info, predict_options, logits_fn=logits_fn)
    else:
        predictor = task.predictor(model, model_dir, info, predict_options)
    files = predictor.list_inputs(Path(inputs)) if isinstance(inputs, str | Path) else list(inputs)
    rank, world = shard
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(what=predictor.inputs_named)
    for path in files[rank::world]:
        try:
            report.written += predictor.predict_file(Path(path), out_dir)
            report.predicted += 1
        except (PixelsegError, OSError, DecompressionBombError) as err:  # this input only: report, go on
            message = str(err) if isinstance(err, PixelsegError) else f"{path}: {_reason(err)}"
            report.failed.append(message)
            if on_error:
                on_error(message)
    report.written += predictor.finish(out_dir)
    summary = getattr(predictor, "summary", None)
    report.lines = summary() if summary is not None else []
    return report


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}" + (f" ({error.filename})" if error.filename else "")
    return f"{type(error).__name__}: {error}"


def total_failures(local_failures: int) -> int:
    """Under torchrun: the failures of all processes (a gloo all-reduce, which also waits for every
    process to finish its share before any exits). Alone: ``local_failures``."""
    _, world = shard_from_env()
    if world == 1:
        return local_failures
    import torch.distributed as dist

    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("gloo")
    count = torch.tensor([local_failures])
    dist.all_reduce(count)
    if initialised_here:
        dist.destroy_process_group()
    return int(count.item())
