"""Background removal on the Weizmann horses: hard mask, each alpha refinement, GrabCut from a box.

For every photo of the split (the reader's photo resized to its mask, as in training):
1. the model's hard mask (``ImagePredictor.labels`` == the foreground class): foreground IoU;
2. each refinement of ``pixelseg.refiners.matting`` (none, guided, matting, crf) of that mask: IoU of
   ``alpha >= 0.5`` and the mean absolute alpha error against the ground-truth mask (0/1), and its time;
3. GrabCut from the ground-truth mask's bounding box: pixelseg's ``classical.graphcut.grabcut`` (the
   ``remove-bg --box`` route, OpenCV's GrabCut initialised from a mask and seeded), OpenCV's own
   ``cv2.grabCut`` with ``GC_INIT_WITH_RECT`` on the same box (5 iterations each), and pixelseg's
   own iterated graph cut from the box (``boykov_jolly``, histogram colour models, 5 rounds).
IoU is given as the mean over photos and pooled over the split (sum of intersections / sum of unions).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/remove_bg.py --model runs/remove_bg/weizmann_unet \\
        --split test --pictures docs/images
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def iou_parts(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    return int((predicted & truth).sum()), int((predicted | truth).sum())


class Scores:
    """Per-method intersections, unions, alpha errors and seconds over the photos."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, list[float]]] = {}

    def add(self, method: str, predicted: np.ndarray, truth: np.ndarray, seconds: float,
            alpha: np.ndarray | None = None) -> None:
        row = self.rows.setdefault(method, {"inter": [], "union": [], "mae": [], "seconds": []})
        inter, union = iou_parts(predicted, truth)
        row["inter"].append(inter)
        row["union"].append(union)
        row["seconds"].append(seconds)
        if alpha is not None:
            row["mae"].append(float(np.abs(alpha - truth).mean()))

    def table(self) -> str:
        lines = [f"{'method':<34} {'mean IoU':>8} {'pooled IoU':>10} {'alpha MAE':>9} {'ms/photo':>9}"]
        for method, row in self.rows.items():
            inter, union = np.array(row["inter"], float), np.array(row["union"], float)
            per_photo = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
            mae = f"{np.mean(row['mae']):.4f}" if row["mae"] else "-"
            lines.append(f"{method:<34} {per_photo.mean():>8.4f} {inter.sum() / union.sum():>10.4f} {mae:>9} "
                         f"{1000 * np.mean(row['seconds']):>9.1f}")
        return "\n".join(lines)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, far corner exclusive, of the mask's pixels."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def opencv_grabcut(photo: np.ndarray, box: tuple[int, int, int, int], iterations: int = 5) -> np.ndarray:
    import cv2

    x0, y0, x1, y1 = box
    mask = np.zeros(photo.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(photo), mask, (x0, y0, x1 - x0, y1 - y0), background, foreground,
                iterations, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def save_pictures(samples: list[tuple[str, np.ndarray, np.ndarray]], folder: Path, height: int = 160) -> None:
    """photo | cut-out on a checkerboard, one PNG per sample, ``height`` pixels tall."""
    from PIL import Image

    from pixelseg.refiners.matting import checkerboard_composite, rgba

    folder.mkdir(parents=True, exist_ok=True)
    for name, photo, alpha in samples:
        composite = checkerboard_composite(rgba(photo, alpha))
        pair = np.concatenate([photo, np.full((photo.shape[0], 6, 3), 255, np.uint8), composite], axis=1)
        picture = Image.fromarray(pair)
        picture = picture.resize((round(picture.width * height / picture.height), height), Image.Resampling.LANCZOS)
        picture.save(folder / f"remove_bg_{name}.png", optimize=True)
        print(f"wrote {folder / f'remove_bg_{name}.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/weizmann_horse"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--band", type=int, default=None, help="trimap half-width [1%% of the longer side]")
    parser.add_argument("--pictures", type=Path, default=None, help="write three composites here")
    parser.add_argument("--picture-names", default="horse232,horse260,horse301")
    parser.add_argument("--picture-method", default=None, help="refinement of the pictures [the default]")
    parser.add_argument("--pictures-only", action="store_true", help="only the pictured photos, no scores")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pixelseg.classical.graphcut import boykov_jolly, grabcut
    from pixelseg.data.weizmann import WeizmannHorse
    from pixelseg.engine.evaluate import task_of
    from pixelseg.io.saved_model import resolve_model_dir
    from pixelseg.models.pretrained import from_pretrained
    from pixelseg.refiners.matting import DEFAULT_REFINEMENT, REFINEMENTS, alpha_matte, foreground_class
    from pixelseg.tasks.base import PredictOptions, model_info
    from pixelseg.tasks.semantic import ImagePredictor

    model_dir = resolve_model_dir(args.model)
    model = from_pretrained(model_dir).eval()
    assert task_of(model).name == "semantic"
    info = model_info(model, model_dir)
    foreground = foreground_class(info.classes)
    predictor = ImagePredictor(model, model_dir, info, PredictOptions())
    dataset = WeizmannHorse(args.root, args.split)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    picture_names = set(args.picture_names.split(","))
    picture_method = args.picture_method or DEFAULT_REFINEMENT
    pictures = []
    scores = Scores()
    for index in range(count):
        name = dataset.samples[index][0].stem
        if args.pictures_only and name not in picture_names:
            continue
        image = dataset.read_sample_image(index)
        truth = dataset.read_label(index).astype(bool)
        photo = np.asarray(image.convert("RGB"))
        labels, seconds = timed(predictor.labels, image)
        mask = labels == foreground
        scores.add("model hard mask", mask, truth, seconds, mask.astype(np.float32))
        for method in REFINEMENTS:
            alpha, seconds = timed(alpha_matte, photo, mask, method, band=args.band)
            scores.add(f"model + {method}", alpha >= 0.5, truth, seconds, alpha)
            if method == picture_method and name in picture_names:
                pictures.append((name, photo, alpha))
        if args.pictures_only:
            continue
        box = bounding_box(truth)
        ours, seconds = timed(grabcut, photo, box=box, iterations=5, seed=0)
        scores.add("grabcut box: pixelseg (remove-bg)", ours, truth, seconds)
        theirs, seconds = timed(opencv_grabcut, photo, box)
        scores.add("grabcut box: cv2.grabCut rect", theirs, truth, seconds)
        cut, seconds = timed(boykov_jolly, photo, box=box, iterations=5)
        scores.add("graph cut box: boykov_jolly x5", cut, truth, seconds)
    if not args.pictures_only:
        print(f"Weizmann horse {args.split} split, {count} photos, model {model_dir}, "
              f"band {'1% of the longer side' if args.band is None else f'{args.band} px'}, one thread")
        print(scores.table())
    if args.pictures is not None:
        save_pictures(pictures, args.pictures)


if __name__ == "__main__":
    main()
