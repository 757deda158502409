"""COCO box and mask AP, AP50, AP75 of an instance model, computed by pycocotools' ``COCOeval``.

The ground truth of any of our datasets (synthetic, Penn-Fudan folder, COCO JSON) is converted to a
COCO object in memory (masks as RLE), the model's detections to COCO results, and pycocotools does
the matching and the averaging over IoU thresholds 0.5:0.95, so the figures are the standard ones.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import PixelsegError
from ..data.instances import collate_detection

METRIC_NAMES = ("AP", "AP50", "AP75")


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean ``(H, W)`` mask, with ``counts`` as a JSON-ready string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth_coco(dataset: Dataset) -> dict[str, Any]:
    """The dataset as a COCO instance dictionary (images, categories, RLE annotations)."""
    images, annotations = [], []
    category_ids = dataset.category_ids
    categories = [{"id": category_ids[label], "name": name}
                  for label, name in enumerate(dataset.class_names) if label > 0]
    for index in range(len(dataset)):
        _, target = dataset[index]
        info = dataset.image_info(index)
        images.append({"id": info["id"], "file_name": info["file_name"], "height": info["height"],
                       "width": info["width"]})
        for box, label, mask, crowd in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                           target["masks"].numpy(), target["iscrowd"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": info["id"],
                                "category_id": category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": float(mask.sum()), "iscrowd": int(crowd),
                                "segmentation": encode_mask(mask.astype(bool))})
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(output: dict[str, Tensor], image_id: int, category_ids: list[int],
                       mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results (box and RLE mask per instance) of one image from a Mask R-CNN output dict."""
    results = []
    masks = (output["masks"][:, 0] > mask_threshold).cpu().numpy()
    for box, score, label, mask in zip(output["boxes"].tolist(), output["scores"].tolist(),
                                       output["labels"].tolist(), masks, strict=True):
        x1, y1, x2, y2 = box
        results.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
                        "segmentation": encode_mask(mask)})
    return results


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, *, batch_size: int = 4,
                    num_workers: int = 0) -> list[dict[str, Any]]:
    """All detections of ``model`` on ``dataset`` as COCO results."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_detection)
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    for images, targets in loader:
        outputs = model([image.to(device) for image in images])
        for output, target in zip(outputs, targets, strict=True):
            results.extend(detections_to_coco(output, int(target["image_id"]), dataset.category_ids))
    return results


def coco_metrics(ground_truth: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """``box_AP``, ``box_AP50``, ``box_AP75``, ``mask_AP``, ... from pycocotools' COCOeval.

    With no detections at all every figure is 0 (pycocotools cannot load an empty result list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, float] = {}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        truth = COCO()
        truth.dataset = json.loads(json.dumps(ground_truth))
        truth.createIndex()
        for kind, prefix in (("bbox", "box"), ("segm", "mask")):
            if not results:
                metrics.update({f"{prefix}_{name}": 0.0 for name in METRIC_NAMES})
                continue
            detections = truth.loadRes(json.loads(json.dumps(results)))
            evaluator = COCOeval(truth, detections, kind)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            # stats[0..2] are AP@[.5:.95], AP@.5, AP@.75; -1 means "no ground truth": report 0
            metrics.update({f"{prefix}_{name}": max(float(evaluator.stats[k]), 0.0)
                            for k, name in enumerate(METRIC_NAMES)})
    return metrics


def evaluate_model(model: nn.Module, dataset: Dataset, *, batch_size: int = 4) -> dict[str, float]:
    """COCO box and mask AP/AP50/AP75 of ``model`` on ``dataset``."""
    return coco_metrics(ground_truth_coco(dataset), predict_dataset(model, dataset, batch_size=batch_size))


def evaluate_from_args(model_dir: Path, config_path: Path | None = None, overrides: list[str] | None = None,
                       split: str | None = "val", output: Path | None = None, batch_size: int = 4, *,
                       data_root: str | None = None, device: str = "cpu") -> dict[str, float]:
    """``pixelseg evaluate`` for instance models: the model in ``model_dir`` (or a run folder's
    ``model/``) on the ``split`` data of ``config_path`` (default: the config saved next to the model),
    metrics printed and written to ``output`` (default ``model_dir/metrics_<split>.json``).
    ``data_root`` moves the data: the folder of a Penn-Fudan layout, the image folder of COCO data."""
    from ..models.mask_rcnn import find_instance_model, load_instance_model
    from .train import build_dataset, load_config

    model_dir = find_instance_model(model_dir) or Path(model_dir)
    split = split or "val"
    if split not in ("train", "val"):
        raise PixelsegError(f"unknown split '{split}' (train or val)")
    if config_path is None:
        config_path = model_dir / "train_config.yaml"
        if not config_path.is_file():
            raise PixelsegError("no config given and none saved next to the model", config_path)
    config = load_config(Path(config_path), overrides or [])
    if data_root is not None:
        key = {"folder": "root", "coco": "image_dir"}.get(config["data"].get("kind", "synthetic"))
        if key is None:
            raise PixelsegError("--data-root: synthetic data has no folder", config_path)
        config["data"][split] = {**(config["data"].get(split) or {}), key: data_root}
    model = load_instance_model(model_dir).to(device)
    dataset = build_dataset(config, split)
    metrics = evaluate_model(model, dataset, batch_size=batch_size)
    output = Path(output) if output is not None else model_dir / f"metrics_{split}.json"
    from ..io.checkpoint import atomic_write_bytes

    atomic_write_bytes(output, json.dumps(metrics, indent=2).encode())
    for name, value in metrics.items():
        print(f"{name:10s} {value:.4f}")
    return metrics
