"""Typed configs from YAML: nested dataclasses checked key by key, overrides ``key=value``.

An unknown key, at any depth, is refused naming the closest valid key; values are checked against the
field types. Every section type (``pixelseg.data.config.DataConfig``, ``pixelseg.engine.config.Config``)
is loaded with :func:`build_typed`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import PixelsegError, closest


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except PixelsegError as err:
                errors.append(str(err))
        raise PixelsegError(errors[0] if errors else f"'{key}': bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise PixelsegError(f"'{key}' must be a list, not {value!r}")
        (inner,) = typing.get_args(annotation) or (Any,)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is Any:
        if origin is dict and not isinstance(value, dict):
            raise PixelsegError(f"'{key}' must be a mapping, not {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return build_typed(annotation, value, key)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise PixelsegError(f"'{key}' must be a number, not {value!r}")
    if annotation is bool and not isinstance(value, bool):
        raise PixelsegError(f"'{key}' must be true or false, not {value!r}")
    if annotation in (int, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise PixelsegError(f"'{key}' must be {annotation.__name__}, not {value!r}")
    return value


def build_typed(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise PixelsegError(f"'{prefix or 'config'}' must be a mapping, not {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise PixelsegError(f"unknown config key '{full}'{closest(full, valid)}")
        kwargs[key] = _check_type(value, hints[key], full)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` → (["optim", "lr"], 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise PixelsegError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(part.strip() for part in path):
        raise PixelsegError(f"--set {text!r}: the key has an empty part")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise PixelsegError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PixelsegError(f"--set {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PixelsegError("config file not found", path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PixelsegError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    if not isinstance(values, dict):
        raise PixelsegError("the config must be a mapping of sections", path)
    return values
