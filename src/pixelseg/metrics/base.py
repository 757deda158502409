"""The one evaluator interface every task's scores implement, and its Markdown report.

An evaluator is fed batch by batch (``update``), merged across processes (``all_reduce``: sums of counts,
or gathered records for COCO), and read once at the end (``compute``, ``report``). The engine's evaluate
loop needs nothing else, whatever the task: pixels (:class:`~pixelseg.metrics.ConfusionMatrix`), volumes
(:class:`~pixelseg.metrics.VolumeScores`) or instances (:class:`~pixelseg.metrics.CocoEvaluator`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

Scores = dict[str, float | list[float]]


@runtime_checkable
class Evaluator(Protocol):
    """Streaming scores: ``reset``, ``update(prediction, target)``, ``all_reduce``, ``compute``, ``report``."""

    def reset(self) -> None:
        """Forget everything added so far."""

    def update(self, prediction: Any, target: Any) -> None:
        """Add one batch of predictions and their ground truth."""

    def all_reduce(self, group: object | None = None) -> None:
        """Merge the state of every process in place (a no-op outside ``torch.distributed``)."""

    def compute(self) -> Scores:
        """The scores as plain Python numbers: named figures and per-class lists."""

    def report(self, class_names: Sequence[str]) -> str:
        """The per-class and mean figures as a Markdown table."""


def all_reduce_sum(counts: Tensor, group: object | None = None) -> None:
    """Sum a tensor of counts over the processes in place (no-op outside ``torch.distributed``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend(group) == "nccl" and counts.device.type == "cpu":  # NCCL reduces GPU tensors only
        import torch

        on_device = counts.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=group)
        counts.copy_(on_device)
    else:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)


def nanmean(values: Tensor) -> float:
    """Mean of a tensor's defined (non-NaN) entries; NaN when there is none."""
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


def markdown_table(class_names: Sequence[str], per_class: Mapping[str, Sequence[float]],
                   means: Mapping[str, float], digits: int = 4) -> str:
    """A table with one row per class and a last ``mean`` row; a column per entry of ``per_class``.

    ``means`` gives each column's mean (a missing one is left blank); undefined figures (NaN) print as
    ``—``.
    """
    columns = list(per_class)
    for name, values in per_class.items():
        if len(values) != len(class_names):
            raise ValueError(f"{name} has {len(values)} values for {len(class_names)} classes")

    def cell(value: float | None) -> str:
        if value is None:
            return ""
        return "—" if math.isnan(value) else f"{value:.{digits}f}"

    lines = ["| class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, name in enumerate(class_names):
        lines.append(f"| {name} | " + " | ".join(cell(per_class[c][row]) for c in columns) + " |")
    lines.append("| **mean** | " + " | ".join(cell(means.get(c)) for c in columns) + " |")
    return "\n".join(lines)
