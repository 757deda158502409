"""The one model registry: ``@register`` a builder, ``create_model`` builds by name.

Every registered builder takes ``num_classes`` and ``in_channels`` and any keyword arguments of its own;
``create_model`` records the call on the model (``model.pixelseg_config``) so that ``save_pretrained``
can write it out and ``from_pretrained`` can rebuild exactly the same network. Saving and loading live
in ``models.pretrained``; the registry maps names to builders and reads or writes no files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import PixelsegError, closest


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    paper: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, paper: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name``; ``paper`` is the citation shown by ``pixelseg models``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, paper)
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _import_all()
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    _import_all()
    if name not in _REGISTRY:
        raise PixelsegError(f"unknown model '{name}'{closest(name, _REGISTRY)}")
    return _REGISTRY[name]


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model by name (like ``timm.create_model`` / ``smp.create_model``).

    ``encoder`` names a timm backbone for models that take one; ``encoder_weights`` is a local weights
    file (safetensors) or a pretrained tag such as ``"imagenet"`` that timm downloads for users online.
    """
    entry = model_entry(name)
    call: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    if encoder is not None:
        call["encoder"] = encoder
    if encoder_weights is not None:
        call["encoder_weights"] = encoder_weights
    try:
        model = entry.builder(**call)
    except TypeError as err:
        raise PixelsegError(f"model '{name}': {err}") from None
    # Weights are loaded once at build time; a rebuilt model must not fetch them again.
    config = {"name": name, "num_classes": num_classes, "in_channels": in_channels,
              "encoder": encoder, "kwargs": _jsonable(kwargs, name)}
    model.pixelseg_config = config
    return model


def _jsonable(kwargs: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        json.dumps(kwargs)
    except TypeError as err:
        raise PixelsegError(f"model '{name}': keyword arguments must be JSON values ({err})") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


_IMPORTED = False


def _import_all() -> None:
    """Import every model module once so that their ``@register`` calls run."""
    global _IMPORTED
    if not _IMPORTED:
        _IMPORTED = True
        from . import _all  # noqa: F401

