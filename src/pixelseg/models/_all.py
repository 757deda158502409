"""Imports every model module so that its ``@register`` runs.

Every module directly inside ``pixelseg/models/`` whose name does not start with ``_`` is imported, but
for the support modules (registry, base, pretrained, config) and the ``encoders``/``modules`` packages; model
files elsewhere in the package are listed in ``OTHER_MODEL_MODULES``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_models_path = [str(Path(__file__).parent)]  # this folder (importing the package here would be a circle)

_SUPPORT_MODULES = {"registry", "base", "pretrained", "config", "encoders", "modules"}
OTHER_MODEL_MODULES: list[str] = []

for _info in pkgutil.iter_modules(_models_path):
    if not _info.name.startswith("_") and _info.name not in _SUPPORT_MODULES:
        importlib.import_module(f"{__package__}.{_info.name}")
for _module in OTHER_MODEL_MODULES:
    importlib.import_module(_module)
