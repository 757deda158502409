"""Inference latency of the instance family in the papers' configurations (issue 15: the course's table says
YOLACT is the fastest and TensorMask the slowest — confirm or refute on this CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instance_latency.py [--size 512] [--rounds 3]

Each model is built with its registered defaults (the paper's backbone and heads: Mask R-CNN, PANet,
PolarMask and TensorMask ResNet-50-FPN, YOLACT and FCIS ResNet-101) for COCO's 81 classes with random
weights (BatchNorm statistics calibrated on the image), and fed the same ``size`` x ``size`` image, resized to that size by each model (``min_size =
max_size = size``). Score thresholds are 0, so every model post-processes its full 100 detections (with
random weights a threshold would decide the work). Process CPU time of ``model([image])`` in eval mode, one
thread, the models taking turns for ``rounds`` rounds after a warm-up; medians, and the ratio to YOLACT.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pixelseg.models.registry import create_model
from pixelseg.tasks.instance import recompute_batchnorm_statistics

NO_THRESHOLD = {  # each model's keyword for its detection score threshold
    "mask_rcnn": "box_score_thresh", "panet": "box_score_thresh", "fcis": "box_score_thresh",
    "yolact": "score_threshold", "polarmask": "score_threshold", "tensormask": "score_threshold",
}


def build(name: str, size: int, image: torch.Tensor) -> torch.nn.Module:
    """The model in its paper's configuration, BatchNorm statistics calibrated on ``image`` (random weights
    with the default running statistics blow activations up through a deep ResNet, and then, e.g., no RPN
    proposal survives)."""
    kwargs = {"min_size": size, "max_size": size, NO_THRESHOLD[name]: 0.0}
    if name == "yolact":
        kwargs["fixed_size"] = size
    model = create_model(name, num_classes=81, **kwargs)
    recompute_batchnorm_statistics(model, iter([([image], None)] * 2), 2)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=list(NO_THRESHOLD), choices=list(NO_THRESHOLD))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    image = torch.rand(3, args.size, args.size)
    models = {name: build(name, args.size, image) for name in args.only}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    detections: dict[str, int] = {}
    with torch.inference_mode():
        for name, model in models.items():
            detections[name] = len(model([image])[0]["scores"])  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.process_time()
                model([image])
                seconds[name].append(time.process_time() - start)
    baseline = statistics.median(seconds["yolact"]) if "yolact" in seconds else None
    print(f"{args.size}x{args.size}, one thread, {args.rounds} rounds, process CPU time")
    print(f"{'model':12s} {'params M':>9s} {'detections':>10s} {'median s':>9s} {'vs YOLACT':>9s}")
    for name, model in models.items():
        median = statistics.median(seconds[name])
        ratio = f"{median / baseline:9.2f}" if baseline else "        —"
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:12s} {params:9.1f} {detections[name]:10d} {median:9.2f} {ratio}")


if __name__ == "__main__":
    main()
