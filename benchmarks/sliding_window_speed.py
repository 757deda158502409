"""Sliding window vs its fully convolutional form: same outputs, one pass instead of one per pixel.

The default :class:`PatchClassifier` (15x15 window, convolutions 32 and 64 channels, 128 hidden units,
11 classes) labels a CamVid test image (or a random image when CamVid is absent) both ways, in the
same run; prints the wall-clock and process CPU seconds of each (the machine is shared: with one
thread the CPU seconds are the work done, whatever the load), the speed ratios and the largest
difference between the outputs.

    .venv/bin/python benchmarks/sliding_window_speed.py [--height 180 --width 240] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelseg.classical.sliding_window import PatchClassifier, sliding_window_predict

ROOT = Path(__file__).resolve().parents[1]


def load_image(camvid: Path, height: int, width: int) -> tuple[torch.Tensor, str]:
    names = sorted((camvid / "test").glob("*.png"))
    if not names:
        return torch.randn(1, 3, height, width), "random"
    pixels = np.array(Image.open(names[0]).convert("RGB"))[:height, :width]
    tensor = torch.as_tensor(pixels).permute(2, 0, 1)[None].float() / 255.0
    return (tensor - 0.5) / 0.25, f"CamVid test/{names[0].name} cropped"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--camvid", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image, source = load_image(args.camvid, args.height, args.width)
    classifier = PatchClassifier(11).eval()
    fcn = classifier.fully_convolutional().eval()
    with torch.no_grad():
        fcn(image)
        wall, cpu = time.perf_counter(), time.process_time()
        one_pass = fcn(image)
        fcn_seconds = (time.perf_counter() - wall, time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        per_pixel = sliding_window_predict(classifier, image, batch_size=2048)
        window_seconds = (time.perf_counter() - wall, time.process_time() - cpu)
    difference = float((per_pixel - one_pass).abs().max())
    print(f"{source}, {image.shape[-2]}x{image.shape[-1]}, window {classifier.window}, {args.threads} thread(s)")
    for kind, column in (("wall-clock", 0), ("CPU", 1)):
        print(f"{kind}: sliding window {window_seconds[column]:.2f} s, fully convolutional "
              f"{fcn_seconds[column]:.3f} s, ratio {window_seconds[column] / fcn_seconds[column]:.1f}x")
    print(f"largest output difference {difference:.2e}")


if __name__ == "__main__":
    main()
