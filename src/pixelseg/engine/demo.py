"""``make demo``: something to look at within seconds, then a small U-Net trained, evaluated and applied.

1. ``classical.png`` at once: a Shapes image, its ground truth, XYRGB k-means clusters, and the dense CRF
   (Krähenbühl & Koltun 2011) cleaning labels with 40% of the pixels wrong — no training needed.
2. A small U-Net on the built-in Shapes set (CPU), scored on unseen images with the HTML report
   (``run/report/index.html``), and ``result.png``: image | ground truth | prediction, with a legend.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from ..classical.kmeans import kmeans, xyrgb_features
from ..data.config import DataConfig
from ..data.shapes import SHAPES_CLASSES, SHAPES_PALETTE, Shapes, render_shapes
from ..data.transforms import evaluation_transform
from ..io.checkpoint import atomic_write_bytes
from ..io.render import colorize, legend, overlay, png_bytes, stack, titled_row, upscale
from ..models.pretrained import from_pretrained
from ..refiners.dense_crf import dense_crf, unary_from_probabilities
from .config import Config, ModelConfig, OptimConfig, TrainConfig
from .evaluate import evaluate
from .predict import predict
from .report import comparison, displayable

DEMO_IMAGE_SEED = 1  # a Shapes image with all three shape classes


def demo_config(out_dir: Path, epochs: int, samples: int, image_size: int = 96) -> Config:
    return Config(
        model=ModelConfig(name="unet", kwargs={"padding": "same", "base_channels": 16, "batch_norm": True, "dropout": 0.0}),
        data=DataConfig(name="shapes", num_samples=samples, val_samples=64, image_size=image_size, batch_size=8,
                        val_batch_size=16),
        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4),
        train=TrainConfig(epochs=epochs, out_dir=str(out_dir / "run"), seed=0),
    )


def classical_stage(out_dir: Path, *, size: int = 256, noise: float = 0.4, seed: int = DEMO_IMAGE_SEED) -> Path:
    """``out_dir/classical.png``: image | ground truth | k-means regions | labels with ``noise`` of the pixels
    wrong | the dense CRF's labels from them, with the CRF's pixel accuracy in the title."""
    image, truth = render_shapes(seed, size)
    clusters, centres, _ = kmeans(xyrgb_features(image, spatial_weight=0.5), 6, seed=0)
    cluster_colours = centres[:, 2:].clip(0, 255).astype(np.uint8)  # each pixel in its cluster's mean colour
    rng = np.random.default_rng(seed)
    noisy = np.where(rng.random(truth.shape) < noise, rng.integers(0, len(SHAPES_CLASSES), truth.shape), truth)
    probabilities = torch.full((len(SHAPES_CLASSES), size, size), 0.1)
    probabilities.scatter_(0, torch.as_tensor(noisy)[None], 0.7)  # 70% on the noisy label
    refined = dense_crf(unary_from_probabilities(probabilities), image).argmax(0).numpy()
    picture = Image.fromarray(image)
    panels = [picture, overlay(picture, truth, SHAPES_PALETTE, 0.55), Image.fromarray(cluster_colours[clusters.reshape(size, size)]),
              Image.fromarray(colorize(noisy, SHAPES_PALETTE)), Image.fromarray(colorize(refined, SHAPES_PALETTE))]
    titles = ["image", "ground truth", "k-means, K=6 (XYRGB)",
              f"labels, {noise:.0%} wrong ({(noisy == truth).mean():.0%} right)",
              f"dense CRF ({(refined == truth).mean():.0%} right)"]
    row = titled_row([upscale(p, 256) for p in panels], titles)
    path = Path(out_dir) / "classical.png"
    atomic_write_bytes(path, png_bytes(stack([row, legend(SHAPES_CLASSES, SHAPES_PALETTE, width=row.width)])))
    return path


def result_picture(run_dir: Path, out_dir: Path, *, count: int = 4, image_size: int = 96) -> Path:
    """``out_dir/result.png``: ``count`` unseen test images as image | ground truth | prediction (enlarged to
    288 pixels), with a legend."""
    model = from_pretrained(run_dir / "best").eval()
    info = model.pixelseg_config["data"]
    test_set = Shapes(count, size=image_size, split="test")
    rows = []
    transform = evaluation_transform(info["mean"], info["std"])
    with torch.no_grad():
        for index in range(count):
            image, truth = test_set.load(index)
            tensor, _ = transform(image, truth)
            prediction = model(tensor[None]).argmax(1)[0].numpy()
            pixels = displayable(tensor, info["mean"], info["std"], normalised=True)
            rows.append(comparison(pixels, truth, prediction, SHAPES_PALETTE, min_side=288, titled=not rows))
    picture = stack([*rows, legend(SHAPES_CLASSES, SHAPES_PALETTE, width=rows[0].width, size=20)])
    path = Path(out_dir) / "result.png"
    atomic_write_bytes(path, png_bytes(picture))
    return path


def run_demo(out_dir: Path, *, epochs: int, samples: int, console: Console, image_size: int = 96) -> dict:
    from .train import train

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = classical_stage(out_dir)
    console.print(f"[{time.perf_counter() - start:.0f} s] classical methods, no training: {first}")
    config = demo_config(out_dir, epochs, samples, image_size)
    resume = (Path(config.train.out_dir) / "last.safetensors").exists()
    console.print(f"training a small U-Net on {samples} Shapes images for {epochs} epochs (CPU) ...")
    run_dir = train(config, resume=resume)
    scores = evaluate(run_dir, split="test", data_overrides={"val_samples": 64}, report=True)
    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    test_set = Shapes(4, size=image_size, split="test")
    for index in range(len(test_set)):
        image, _ = test_set.load(index)
        image.save(inputs / f"shape_{index}.png")
    report = predict(run_dir, inputs, out_dir / "predictions")
    result = result_picture(run_dir, out_dir, image_size=image_size)
    console.print(f"test mIoU {scores['mean_iou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f} "
                  f"on {scores['images']} unseen Shapes images")
    console.print(f"first picture:  {first}")
    console.print(f"result:         {result} (image | ground truth | prediction)")
    console.print(f"report:         {scores['report']} (per-class scores, confusion, best and worst images)")
    console.print(f"run directory:  {run_dir} (config.yaml, log.csv, curves.png, last.safetensors)")
    console.print(f"best model:     {run_dir / 'best'} (config.json + model.safetensors)")
    console.print(f"predictions:    {out_dir / 'predictions'} ({len(report.written) // 2} index PNGs + overlays)")
    console.print(f"[{time.perf_counter() - start:.0f} s] done")
    return scores
