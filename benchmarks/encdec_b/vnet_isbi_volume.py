"""Train V-Net on the ISBI 2012 serial-section EM stack as ONE volume, within a wall-clock budget.

The 30 slices (512x512, consecutive sections) are stacked into a 30x512x512 volume. The volume is split
in space, not by slice: V-Net trains on random 16x64x64 patches of columns 0..383 and is evaluated on the
held-out block of columns 384..511 (all 30 slices), tiled in 32x128x128 windows. Loss: the paper's Dice
loss (``pixelseg.metrics.volume.vnet_dice_loss``, squared terms in the denominator). Scores: per-class Dice and
IoU over voxels (``VolumeScores``) and pixel accuracy, mean accuracy, mIoU and fwIoU from one confusion
matrix (``pixelseg.metrics.ConfusionMatrix``).

    .venv/bin/python benchmarks/encdec_b/vnet_isbi_volume.py --budget 900
    .venv/bin/python benchmarks/encdec_b/vnet_isbi_volume.py --budget 900 --base-channels 8   # half width

``--base-channels 16`` (the default) is the paper's network (16, 32, 64, 128, 256 channels); 8 halves
every width (a quarter of the computation), for CPU budgets in which the paper's network gets only a
handful of steps.

The ratio line compares the trained V-Net with its peer measured in the same run: the trivial
"everything is cell interior" prediction on the same held-out block.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import pixelseg
from pixelseg.data.volumes import isbi2012_volume, normalize_volume
from pixelseg.losses import vnet_dice_loss
from pixelseg.metrics import ConfusionMatrix
from pixelseg.metrics.volume import VolumeScores

ROOT = Path(__file__).resolve().parents[2]


def random_patch(image: np.ndarray, label: np.ndarray, size: tuple[int, int, int], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(label.shape, size, strict=True)]
    box = tuple(slice(a, a + p) for a, p in zip(starts, size, strict=True))
    patch_image, patch_label = image[(slice(None), *box)], label[box]
    if rng.random() < 0.5:  # flips in the section plane
        patch_image, patch_label = patch_image[..., ::-1], patch_label[..., ::-1]
    if rng.random() < 0.5:
        patch_image, patch_label = patch_image[..., ::-1, :], patch_label[..., ::-1, :]
    return np.ascontiguousarray(patch_image), np.ascontiguousarray(patch_label)


@torch.no_grad()
def predict_tiled(model: torch.nn.Module, image: np.ndarray, tile: tuple[int, int, int]) -> torch.Tensor:
    """Labels for a (1, D, H, W) volume, tile by tile (V-Net pads each tile to a multiple of 16)."""
    model.eval()
    _, depth, height, width = image.shape
    out = torch.zeros(depth, height, width, dtype=torch.long)
    for z in range(0, depth, tile[0]):
        for y in range(0, height, tile[1]):
            for x in range(0, width, tile[2]):
                block = torch.from_numpy(image[None, :, z:z + tile[0], y:y + tile[1], x:x + tile[2]].copy())
                out[z:z + tile[0], y:y + tile[1], x:x + tile[2]] = model(block).argmax(1)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "isbi2012"))
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds (wall clock)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base-channels", type=int, default=16, help="16: the paper's widths 16..256")
    parser.add_argument("--patch", type=int, nargs=3, default=(16, 64, 64), metavar=("D", "H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "encdec_b" / "vnet_isbi_volume"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    image, label = isbi2012_volume(args.root)
    image = normalize_volume(image[None].astype(np.float32))
    split = 384
    train_image, train_label = image[..., :split], label[..., :split]
    val_image, val_label = image[..., split:], label[..., split:]

    channels = [args.base_channels * 2**level for level in range(5)]
    model = pixelseg.create_model("vnet", num_classes=2, in_channels=1, channels=channels)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"V-Net channels {channels}: {parameters:,} parameters", flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start, cpu_start, step, losses = time.time(), time.process_time(), 0, []
    model.train()
    while time.time() - start < args.budget:
        batch = [random_patch(train_image, train_label, tuple(args.patch), rng) for _ in range(args.batch)]
        images = torch.from_numpy(np.stack([b[0] for b in batch]))
        labels = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss = vnet_dice_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 5 == 0:
            print(f"step {step}  loss {np.mean(losses[-10:]):.4f}  {time.time() - start:.0f}s", flush=True)
    train_seconds, train_cpu_seconds = time.time() - start, time.process_time() - cpu_start

    prediction = predict_tiled(model, val_image, (32, 128, 128))
    target = torch.from_numpy(val_label)
    results = {}
    for name, predicted in (("vnet", prediction), ("all_cell_baseline", torch.ones_like(target))):
        matrix = ConfusionMatrix(2, ignore_index=None)
        matrix.update(predicted, target)
        volume = VolumeScores(2, ignore_index=None)
        volume.update(predicted[None], target[None])
        scores = matrix.compute()
        results[name] = {key: scores[key] for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou",
                                                      "frequency_weighted_iou")}
        results[name]["dice_per_class"] = volume.compute()["dice_per_class"]
    results["steps"], results["train_seconds"] = step, round(train_seconds, 1)
    results["train_cpu_seconds"] = round(train_cpu_seconds, 1)  # below train_seconds on a shared CPU
    results["channels"], results["parameters"], results["patch"] = channels, parameters, list(args.patch)
    results["first_10_loss"], results["last_10_loss"] = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "model")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    ratio = results["vnet"]["mean_iou"] / results["all_cell_baseline"]["mean_iou"]
    print(f"mIoU ratio V-Net / all-cell baseline (same held-out block): {ratio:.2f}")


if __name__ == "__main__":
    main()
