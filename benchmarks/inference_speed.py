"""CPU latency at 1x3x512x512: segmentation_models_pytorch eager against pixelseg's inference paths.

The peers are smp's ``Unet(resnet34)`` and ``DeepLabV3Plus(resnet50)``. pixelseg's registry models of
the same names are *not* the same graphs (our U-Net decoder up-samples with 2x2 transposed convolutions,
smp's with nearest interpolation; our DeepLab v3+ decoder has two separable 3x3 convolutions, smp's one),
so smp's weights cannot be loaded into them. The comparison is therefore made on smp's own graph, with
the very same weights (a deep copy of the smp module):

* ``smp eager``: ``model(x)`` under ``torch.inference_mode`` (the baseline);
* ``pixelseg eager``: ``engine.speedups.optimize_for_inference`` (batch-norm folding + channels_last);
* ``pixelseg eager+compile`` (``--compile``): the same plus ``torch.compile`` (Inductor, gcc);
* ``onnxruntime``: ``engine.export.export_onnx`` of the smp module, run by ``OnnxRuntimeModel``.

Each path's largest difference from the smp logits is printed, with each path's (smp's included) largest
difference from the same graph run in float64: float32 rounding alone moves the logits by about 1e-4. Batch-norm statistics are first
calibrated on random images (a few train-mode passes) so that activations have the scale of a trained
network rather than the unnormalised scale of a fresh initialisation. Timing: the paths run interleaved
for ``--rounds`` rounds after a warm-up; medians are compared (the shared CPU is noisy).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference_speed.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pixelseg.engine.export import OnnxRuntimeModel, export_onnx
from pixelseg.engine.speedups import optimize_for_inference


def calibrated(model: nn.Module, passes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(2, 3, 256, 256))
    return model.eval()


def peers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"Unet/resnet34": smp.Unet("resnet34", encoder_weights=None, classes=2),
            "DeepLabV3Plus/resnet50": smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=2)}


def time_once(run, images: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        run(images)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    work = Path(tempfile.mkdtemp(prefix="pixelseg-speed-"))
    print(f"torch {torch.__version__}, smp {smp.__version__}, {args.threads} thread(s), input 1x3x{args.size}x"
          f"{args.size}, {args.rounds} interleaved rounds (median seconds per image)")
    for name, model in peers().items():
        baseline = calibrated(model)
        with torch.inference_mode():
            reference = baseline(images)
            exact = copy.deepcopy(baseline).double()(images.double()).float()  # float64: the rounding-free value
        example = images[..., :64, :64]
        paths = {"smp eager": baseline,
                 "pixelseg eager (fold BN + channels_last)": optimize_for_inference(copy.deepcopy(baseline), example)}
        if args.compile:
            tick = time.perf_counter()
            compiled = optimize_for_inference(copy.deepcopy(baseline), example, compile=True)
            time_once(compiled, images)
            print(f"  {name}: torch.compile built in {time.perf_counter() - tick:.0f} s")
            paths["pixelseg eager + torch.compile"] = compiled
        onnx_path = work / f"{name.replace('/', '_')}.onnx"
        export_onnx(copy.deepcopy(baseline), onnx_path, in_channels=3, name=name, check_sizes=((96, 160),))
        paths["onnxruntime (pixelseg export)"] = OnnxRuntimeModel(onnx_path, threads=args.threads)
        for label, run in paths.items():  # equality first, and warm-up
            with torch.inference_mode():
                out = run(images)
            diff, rounding = float((out - reference).abs().max()), float((out - exact).abs().max())
            agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
            print(f"  {name} | {label}: max |logits - smp| = {diff:.2e}{'' if diff <= 1e-4 else ' (> 1e-4)'}, "
                  f"max |logits - float64 smp| = {rounding:.2e} (|logits| up to {float(reference.abs().max()):.1f}),"
                  f" labels agree with smp on {agree:.6f} of pixels")
        seconds: dict[str, list[float]] = {label: [] for label in paths}
        for _ in range(args.rounds):
            for label, run in paths.items():
                seconds[label].append(time_once(run, images))
        base = statistics.median(seconds["smp eager"])
        for label, values in seconds.items():
            median = statistics.median(values)
            print(f"  {name} | {label:42s} {median:7.3f} s  ratio vs smp eager {base / median:5.2f}x  "
                  f"(all: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
