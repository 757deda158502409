"""Train the encoder-decoder models of issue 4 (part A) on ISBI 2012 membranes under a CPU budget.

Data: ``../shared/data/isbi2012`` (30 serial EM sections, 512x512). Sections 0-23 train, 24-29 are held
out for evaluation. Classes: 0 = cell interior (label 255), 1 = membrane (label 0).
Training: random 128x128 crops with flips and 90-degree rotations, batch 4, Adam (lr 1e-3), cross
entropy (plus every deep-supervision head with its weight), for a fixed wall-clock budget per model,
one CPU thread. Evaluation: the six held-out sections at full size; pixel accuracy, mean accuracy,
mIoU, fwIoU (``pixelseg.metrics.ConfusionMatrix``), and each model's mIoU as a ratio of the U-Net
baseline's (``unet_baseline_zhou``) measured in the same run.

    .venv/bin/python benchmarks/encdec_a_isbi.py --minutes 6 --models segnet unetplusplus ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import pixelseg
from pixelseg.metrics import ConfusionMatrix
from pixelseg.models.base import SegmentationOutput, main_logits

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
# DeconvNet at the paper's width (252M parameters, 224x224 minimum input) does not fit a CPU budget;
# it runs at a quarter of the encoder width and an eighth of the fc width.
CONFIGS: dict[str, dict] = {
    "segnet": {},
    "deconvnet": {"base_channels": 16, "fc_channels": 512},
    "fc_densenet56": {},
    "fc_densenet67": {},
    "fc_densenet103": {},
    "unetplusplus": {},
    "unet_baseline_zhou": {},
    "ternausnet": {},
}


def load_isbi(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.asarray(Image.open(root / "image" / f"{i}.png").convert("L")) for i in range(30)])
    labels = np.stack([np.asarray(Image.open(root / "label" / f"{i}.png").convert("L")) for i in range(30)])
    return images.astype(np.float32) / 255.0, (labels < 128).astype(np.int64)  # membrane = 1


def random_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, batch: int,
                 crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(batch):
        k = rng.integers(len(images))
        top, left = rng.integers(0, images.shape[1] - crop + 1, size=2)
        x = images[k, top:top + crop, left:left + crop]
        y = labels[k, top:top + crop, left:left + crop]
        turns = int(rng.integers(4))
        x, y = np.rot90(x, turns), np.rot90(y, turns)
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        xs.append(x.copy())
        ys.append(y.copy())
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))


def run(name: str, minutes: float, seed: int, crop: int, batch: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = load_isbi(ROOT)
    mean, std = images[:24].mean(), images[:24].std()
    images = (images - mean) / std
    model = pixelseg.create_model(name, num_classes=2, in_channels=1, **CONFIGS[name])
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < minutes * 60:
        x, y = random_batch(images[:24], labels[:24], rng, batch, crop)
        output = model(x)
        loss = nn.functional.cross_entropy(main_logits(output), y)
        if isinstance(output, SegmentationOutput):
            for weight, aux in zip(output.aux_weights, output.aux, strict=True):
                loss = loss + weight * nn.functional.cross_entropy(aux, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        steps += 1
    train_seconds = time.perf_counter() - start
    model.eval()
    matrix = ConfusionMatrix(2, ignore_index=None)
    with torch.no_grad():
        for k in range(24, 30):
            matrix.update(main_logits(model(torch.from_numpy(images[k])[None, None])),
                          torch.from_numpy(labels[k])[None])
    return {"model": name, "kwargs": CONFIGS[name], "parameters": parameters, "steps": steps,
            "train_seconds": round(train_seconds, 1), "first_loss": round(float(np.mean(losses[:5])), 4),
            "last_loss": round(float(np.mean(losses[-5:])), 4),
            "pixel_accuracy": round(matrix.pixel_accuracy(), 4),
            "mean_accuracy": round(matrix.mean_pixel_accuracy(), 4), "mean_iou": round(matrix.mean_iou(), 4),
            "fw_iou": round(matrix.frequency_weighted_iou(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall-clock budget per model")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per model here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        result = run(name, args.minutes, args.seed, args.crop, args.batch)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out is not None:
            with args.out.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
    baseline = next((r for r in results if r["model"] == "unet_baseline_zhou"), None)
    print(f"{'model':20s} {'params':>11s} {'steps':>6s} {'PA':>7s} {'MPA':>7s} {'mIoU':>7s} {'fwIoU':>7s} ratio")
    for r in results:
        ratio = f"{r['mean_iou'] / baseline['mean_iou']:.3f}" if baseline else "-"
        print(f"{r['model']:20s} {r['parameters']:11,d} {r['steps']:6d} {r['pixel_accuracy']:7.4f} "
              f"{r['mean_accuracy']:7.4f} {r['mean_iou']:7.4f} {r['fw_iou']:7.4f} {ratio}")


if __name__ == "__main__":
    main()
