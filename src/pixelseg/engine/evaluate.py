"""``pixelseg evaluate``: a saved model on a dataset split, scored with one confusion matrix."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data.build import DatasetInfo, build_eval_dataset
from ..errors import PixelsegError
from ..models.registry import from_pretrained
from ..data.config import DataConfig
from ..io.config import build_typed
from .train import evaluate_model
from ..inference.tta import TestTimeAugmented, check_scales


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a run directory whose ``best/`` holds the model."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "best" / "config.json").is_file():
        return path / "best"
    raise PixelsegError("no saved model here (expected config.json or best/config.json)", path)


def model_data_info(model: torch.nn.Module, model_dir: Path) -> tuple[DatasetInfo, DataConfig | None]:
    data = model.pixelseg_config.get("data")
    if data is None:
        raise PixelsegError("the model config has no data section (classes, normalisation); it was not "
                            "saved by pixelseg train", model_dir / "config.json")
    dataset = data.get("dataset")
    fields = {k: v for k, v in data.items() if k != "dataset"}
    return DatasetInfo(**fields), (build_typed(DataConfig, dataset, "data") if dataset else None)


def evaluate(model_path: str | Path, *, split: str | None = None, data_overrides: dict[str, Any] | None = None,
             device: str = "cpu", batch_size: int = 1, tta_scales: Sequence[float] | None = None,
             tta_flip: bool = False) -> dict[str, Any]:
    """Scores of a saved model; ``tta_scales``/``tta_flip`` average logits over scales and flips (engine.tta)."""
    tta = {"scales": list(check_scales(tta_scales if tta_scales is not None else (1.0,))), "flip": tta_flip}
    model_dir = resolve_model_dir(model_path)
    model = from_pretrained(model_dir).to(device)
    info, data_config = model_data_info(model, model_dir)
    if data_config is None:
        raise PixelsegError("the model config does not name its dataset", model_dir / "config.json")
    for key, value in (data_overrides or {}).items():
        if not hasattr(data_config, key):
            raise PixelsegError(f"unknown data key '{key}'")
        setattr(data_config, key, value)
    if info.spatial_dims == 3 and any(scale != 1.0 for scale in tta["scales"]):
        raise PixelsegError("--tta-scales: multi-scale TTA resizes 2D images; volumetric models take --tta-flip only")
    split = split or data_config.val_split
    dataset = build_eval_dataset(data_config, info, split)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if tta_scales is not None or tta_flip:
        model = TestTimeAugmented(model, tta["scales"], tta_flip)
    scores = evaluate_model(model, loader, info.num_classes, info.ignore_index, torch.device(device))
    return {"model": str(model_dir), "split": split, "images": len(dataset), "classes": info.classes, "tta": tta,
            **scores}


def write_report(scores: dict[str, Any], path: str | Path) -> None:
    from ..io.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(scores, indent=2).encode())
