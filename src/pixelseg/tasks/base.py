"""What a task plugs into the one engine: its model, loss, scores and prediction files.

The engine (``pixelseg.engine``) owns the loops — training, evaluation, prediction — and the run folder;
a :class:`Task` owns what differs between semantic, volumetric and instance segmentation:

- ``build_model``: the network for the dataset (classes, channels), from the ``model:`` section;
- ``build_criterion`` and ``loss``: the training objective of one batch (and its named parts);
- ``evaluator`` and ``evaluate_batch``: the scores (``pixelseg.metrics`` evaluators: one ``update`` per
  batch, one ``compute`` at the end) and the metric that picks the best checkpoint (``monitor``);
- ``predictor``: what ``pixelseg predict`` writes for one input file.

A new task is one file in ``pixelseg/tasks/`` that subclasses :class:`Task` and decorates it with
:func:`register_task`; ``pixelseg/tasks/__init__.py`` imports every file there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.build import DataBundle, DatasetInfo
from ..errors import PixelsegError, closest
from ..inference.runner import InferenceOptions
from ..metrics.base import Evaluator
from ..models.config import ModelConfig
from ..refiners.dense_crf import DenseCRFConfig


@dataclass
class LossResult:
    """The loss of one training batch: the total to minimise, its named parts and the batch size."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    count: int = 1


@dataclass
class PredictOptions:
    """Everything ``pixelseg predict`` may ask of a task; each task refuses the options it cannot honour."""

    device: str = "cpu"
    inference: InferenceOptions | None = None  # backend, tiling, TTA (semantic; volumetric: backend only)
    refine: str | None = None  # "crf": dense-CRF post-processing (semantic)
    crf: DenseCRFConfig | None = None  # its parameters
    score_threshold: float = 0.5  # instance: keep detections scoring at least this


class Predictor:
    """Writes the prediction files of one input at a time; ``finish`` writes what covers them all."""

    inputs_named: str = "images"  # what the inputs are called in messages

    def list_inputs(self, path: Path) -> list[Path]:
        raise NotImplementedError

    def predict_file(self, path: Path, out_dir: Path) -> list[Path]:
        raise NotImplementedError

    def finish(self, out_dir: Path) -> list[Path]:
        return []


class Task:
    """The interface the engine drives. Subclasses set ``name`` and ``monitor``."""

    name: ClassVar[str]
    monitor: ClassVar[str]  # the validation score that picks the best checkpoint
    drop_last: ClassVar[bool] = False  # drop the last, smaller training batch of an epoch
    precise_bn_batches: ClassVar[int] = 0  # default of train.precise_bn_batches (BatchNorm re-estimation)

    # ---- model and objective ---------------------------------------------------------------------
    def build_model(self, model: ModelConfig, info: DatasetInfo) -> nn.Module:
        raise NotImplementedError

    def build_criterion(self, terms: Sequence[dict[str, Any]], data: DataBundle) -> nn.Module | None:
        return None

    def loss(self, model: nn.Module, batch: Any, criterion: nn.Module | None, device: torch.device) -> LossResult:
        raise NotImplementedError

    # ---- scores ----------------------------------------------------------------------------------
    def evaluator(self, info: DatasetInfo) -> Evaluator:
        raise NotImplementedError

    def evaluate_batch(self, forward: Callable[[Any], Any], batch: Any, evaluator: Evaluator,
                       device: torch.device) -> None:
        """Score one batch; ``forward`` is the model, or the model under test-time augmentation."""
        raise NotImplementedError

    def prepare_evaluation(self, model: nn.Module, data: DataBundle, *, seed: int, batches: int,
                           batch_size: int) -> None:
        """Called before every validation during training (instance: precise BatchNorm statistics)."""

    def inference_forward(self, model: nn.Module, forward: Callable[[Any], Any], info: DatasetInfo) -> Callable[[Any], Any]:
        """What evaluation runs: ``forward`` (the model, or it under TTA), plus any post-processing saved with it."""
        return forward

    def check_evaluation_options(self, tta_scales: Sequence[float] | None, tta_flip: bool,
                                 tta_rotate: bool = False) -> None:
        if tta_scales is not None or tta_flip or tta_rotate:
            raise PixelsegError(f"test-time augmentation is not available for {self.name} models")

    # ---- prediction ------------------------------------------------------------------------------
    def predictor(self, model: nn.Module, model_dir: Path, info: DatasetInfo, options: PredictOptions) -> Predictor:
        raise NotImplementedError


def refuse_pixel_options(task: str, options: PredictOptions) -> None:
    """Detectors (instance, panoptic) predict whole images with eager PyTorch in fp32: the semantic inference
    options are refused in one line rather than ignored; the score threshold must be a probability."""
    inference = options.inference
    if options.refine is not None or (inference is not None and (
            inference.uses_tta or inference.tile is not None or inference.stream or inference.backend != "torch"
            or inference.optimize or inference.compile or inference.precision != "fp32")):
        raise PixelsegError(f"{task} models predict whole images with eager PyTorch: --refine, --tile, --stream, "
                            "--tta-*, --backend, --optimize, --compile and --precision do not apply")
    if not 0.0 <= options.score_threshold <= 1.0:
        raise PixelsegError(f"--score-threshold must be in [0, 1], not {options.score_threshold}")


def model_info(model: nn.Module, model_dir: Path) -> DatasetInfo:
    """The data facts saved with a model (classes, palette, normalisation) as a ``DatasetInfo``."""
    data = getattr(model, "pixelseg_config", {}).get("data")
    if not isinstance(data, dict):
        raise PixelsegError("the model config has no data section (classes, normalisation); it was not "
                            "saved by pixelseg train", model_dir / "config.json")
    fields = {k: v for k, v in data.items() if k != "dataset"}
    try:
        return DatasetInfo(**fields)
    except TypeError as err:
        raise PixelsegError(f"the model config's data section is not valid ({err})",
                            model_dir / "config.json") from None


def list_inputs(path: str | Path, list_files: Callable[[Path], list[Path]], what: str) -> list[Path]:
    """``path`` itself, or the files of a folder that ``list_files`` finds."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_files(path)
        if not files:
            raise PixelsegError(f"no {what} found", path)
        return files
    raise PixelsegError("no such file or directory", path)


_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        _TASKS[name] = cls
        return cls

    return wrap


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task plug-in called ``name`` (``semantic``, ``volumetric``, ``instance``, ...)."""
    if name not in _TASKS:
        raise PixelsegError(f"unknown task '{name}'{closest(name, _TASKS)} (tasks: {', '.join(sorted(_TASKS))})")
    return _TASKS[name]()

