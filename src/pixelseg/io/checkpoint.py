"""Safe persistence: safetensors only (never pickle), every file written atomically.

A file is written to a temporary name in the same directory, flushed and fsync'ed, then renamed over
the target (``os.replace`` is atomic on POSIX), and the directory is fsync'ed so that the rename
survives a crash. A reader therefore sees the old file or the new one, never half of one.

The training state (model, optimizer, RNG, epoch, best score) lives in one safetensors file whose
tensors are prefixed ``model.`` / ``optim.`` / ``rng.`` and whose metadata holds the JSON state.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..errors import PixelsegError


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync of the directory).

    The file gets the mode an ordinary ``open`` would give it (``0o666`` less the umask), not the ``0o600``
    of the temporary file, so that a shared run folder stays readable by the team."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: store independent copies.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_state_dict_atomic(state: dict[str, torch.Tensor], path: str | Path,
                           metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, save(_contiguous(state), metadata=metadata))


def load_state_dict(path: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or damaged file is a one-line ``PixelsegError``."""
    path = Path(path)
    if not path.is_file():
        raise PixelsegError("file not found", path)
    try:
        state = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise PixelsegError(f"not a readable safetensors file ({err})", path) from None
    return {k: v.to(map_location) for k, v in state.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise PixelsegError(f"not a readable safetensors file ({err})", path) from None


# ---- optimizer state: tensors go to safetensors, the rest to JSON -----------------------------------

def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for param_id, slots in state["state"].items():
        plain: dict[str, Any] = {}
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{slot}"] = value
            else:
                plain[slot] = value
        per_param[str(param_id)] = plain
    return tensors, {"param_groups": state["param_groups"], "state": per_param}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        param_id, slot = key.split(".", 1)
        state.setdefault(int(param_id), {})[slot] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_state(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        info: dict[str, Any]) -> None:
    """One atomic file with everything ``--resume`` needs to continue exactly."""
    optim_tensors, optim_plain = flatten_optimizer_state(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"optim.{k}": v for k, v in optim_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {"info": json.dumps(info), "optimizer": json.dumps(optim_plain)}
    save_state_dict_atomic(tensors, path, metadata)


def load_training_state(path: str | Path, *, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    path = Path(path)
    tensors = load_state_dict(path)
    metadata = read_metadata(path)
    try:
        info = json.loads(metadata["info"])
        optim_plain = json.loads(metadata["optimizer"])
    except (KeyError, json.JSONDecodeError):
        raise PixelsegError("not a pixelseg training checkpoint (metadata missing)", path) from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as err:
        raise PixelsegError(f"checkpoint does not fit the configured model ({str(err).splitlines()[0]})",
                            path) from None
    optim_tensors = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    try:
        optimizer.load_state_dict(unflatten_optimizer_state(optim_tensors, optim_plain))
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise PixelsegError(f"checkpoint does not fit the configured optimizer ({str(err).splitlines()[0]}); "
                            "optim.name must be the one the run was started with", path) from None
    return info
