"""Task plug-ins of the one engine: every module in this folder (``semantic``, ``volumetric``,
``instance``, ...) registers its :class:`~pixelseg.tasks.base.Task` when the package is imported."""

from __future__ import annotations

import importlib
import pkgutil

from .base import LossResult, PredictOptions, Predictor, Task, get_task, register_task, task_names

__all__ = ["LossResult", "PredictOptions", "Predictor", "Task", "get_task", "register_task", "task_names"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")
