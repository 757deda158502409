"""Per-instance predictions of a saved Mask R-CNN: COCO JSON (RLE masks) plus one overlay per image.

``predictions.json`` is a COCO results list (``image_id``, ``category_id``, ``bbox`` as x, y, w, h,
``score``, ``segmentation`` as RLE; category ids are the source dataset's, e.g. COCO's) with two
extra keys per instance, ``file_name`` and
``category_name``; ``images.json`` lists the images with the ids used. Each overlay
``<name>_instances.png`` paints every instance in its own colour over the image and outlines its box.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..errors import PixelsegError
from ..data.instances import IMAGE_SUFFIXES, _image_tensor, _read_rgb
from .evaluate import detections_to_coco


def instance_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours: hues spaced by the golden ratio, so neighbours in the list differ."""
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colours.append((int(red * 255), int(green * 255), int(blue * 255)))
    return colours


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with every instance mask blended in its own colour and its box outlined."""
    canvas = image.astype(np.float32).copy()
    colours = instance_colours(len(masks))
    for mask, colour in zip(masks, colours, strict=True):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, dtype=np.float32)
    overlay = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(overlay)
    for box, colour in zip(boxes, colours, strict=True):
        pen.rectangle([float(v) for v in box], outline=colour, width=1)
    return overlay


def collect_images(inputs: list[Path]) -> list[Path]:
    """Image files named directly or found (non-recursively) in the named folders."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            paths.append(item)
        else:
            raise PixelsegError("no such image or folder", item)
    if not paths:
        raise PixelsegError(f"no images found in {', '.join(str(p) for p in inputs)}")
    return paths


@torch.no_grad()
def predict_images(model: nn.Module, paths: list[Path], output_dir: Path, *, score_threshold: float = 0.5,
                   mask_threshold: float = 0.5, device: str = "cpu") -> list[dict[str, Any]]:
    """Run ``model`` on every image, write ``predictions.json``, ``images.json`` and the overlays."""
    from ..io.checkpoint import atomic_write_bytes

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "pixelseg_config", {})
    class_names = config.get("class_names") or []
    model.eval()
    results, images = [], []
    for image_id, path in enumerate(paths):
        pixels = _read_rgb(path)
        output = {key: value.cpu() for key, value in model([_image_tensor(pixels).to(device)])[0].items()}
        keep = output["scores"] >= score_threshold
        output = {key: value[keep] for key, value in output.items()}
        top_label = int(output["labels"].max()) if len(output["labels"]) else 0
        identity = list(range(max(len(class_names), top_label + 1)))
        category_ids = config.get("category_ids") or identity
        for record, label in zip(detections_to_coco(output, image_id, identity, mask_threshold),
                                 output["labels"].tolist(), strict=True):
            record["category_id"] = category_ids[label] if label < len(category_ids) else label
            record["file_name"] = path.name
            record["category_name"] = class_names[label] if label < len(class_names) else str(label)
            results.append(record)
        images.append({"id": image_id, "file_name": path.name, "height": pixels.shape[0],
                       "width": pixels.shape[1]})
        masks = (output["masks"][:, 0] > mask_threshold).numpy()
        draw_instances(pixels, masks, output["boxes"].numpy()).save(output_dir / f"{path.stem}_instances.png")
    atomic_write_bytes(output_dir / "predictions.json", json.dumps(results).encode())
    atomic_write_bytes(output_dir / "images.json", json.dumps(images, indent=1).encode())
    return results


def predict_from_args(model_dir: Path, inputs: list[Path] | Path, output_dir: Path,
                      score_threshold: float = 0.5, *, device: str = "cpu") -> list[dict[str, Any]]:
    """``pixelseg predict`` for instance models: a saved model directory (or a run folder's
    ``model/``), images or folders (one path or a list), an output folder. Prints one line per image
    with the number of instances kept."""
    from ..models.mask_rcnn import find_instance_model, load_instance_model

    model = load_instance_model(find_instance_model(model_dir) or Path(model_dir)).to(device)
    paths = collect_images([Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs])
    results = predict_images(model, paths, Path(output_dir), score_threshold=score_threshold, device=device)
    for path in paths:
        count = sum(1 for r in results if r["file_name"] == path.name)
        print(f"{path.name}: {count} instance(s)")
    print(f"wrote {Path(output_dir) / 'predictions.json'} and {len(paths)} overlay(s)")
    return results
