"""CPU time of reduced-precision inference at 1x3x512x512 against segmentation_models_pytorch eager fp32.

The peers are smp's ``Unet(resnet34)`` and (``--models``) ``DeepLabV3Plus(resnet50)`` with random weights and
batch norms calibrated on random images (``inference_speed.calibrated``). Paths, all on smp's own graph:

* ``smp eager fp32``: ``model(x)`` under ``torch.inference_mode`` (the baseline, 1.00x);
* ``onnxruntime fp32``: ``inference.export.export_onnx`` run by ``OnnxRuntimeModel`` (pixelseg's fp32 fast path);
* ``bf16 autocast (NCHW / channels_last)``: ``inference.quantize.Bf16Model`` (``torch.autocast("cpu", bfloat16)``);
* ``onnxruntime int8``: ``inference.quantize.quantize_int8`` of the fp32 graph (QDQ, per-channel int8 weights,
  uint8 activations) calibrated on ``--calibration`` random images (the speed does not depend on the ranges;
  accuracy on a trained model is ``pixelseg export --precision int8``'s gate, see RESULTS.md);
* ``openvino fp32 / bf16 / int8`` (when ``openvino`` is installed): ``inference.openvino_backend.OpenVinoModel``
  on the same graphs: fp32, fp32 at ``INFERENCE_PRECISION_HINT`` bf16, the same QDQ graph on int8 kernels;
* ``pixelseg int8 default``: what ``pixelseg predict --precision int8`` runs (``--backend auto``): the runtime
  ``pixelseg export`` records as fastest, timed here the same way (``quantize.cpu_seconds_per_image`` on the
  calibration images, 1 thread).

The last lines compare the default int8 path with the targets (int8 >= 4x, bf16 >= 2.5x smp eager fp32) and
with OpenVINO's best mode on the same graph (``ours / OpenVINO best``: at least 1.00 means no slower).

Time is process CPU time (``time.process_time``: other processes share this machine, which wall-clock time
would count), at ``--threads`` threads for every path; the paths take turns for ``--rounds`` rounds after a
warm-up call, and the median and minimum of each are printed with their ratio against smp. Next to each
path: its largest error against the same graph in float64 (fp32 paths must stay within 2x smp's own) and
the fraction of labels equal to float64's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/precision_speed.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pixelseg.errors import PixelsegError
from pixelseg.inference.export import OnnxRuntimeModel, export_onnx, within_float32_error
from pixelseg.inference.openvino_backend import OpenVinoModel, openvino_available
from pixelseg.inference.quantize import Bf16Model, cpu_seconds_per_image, quantize_int8

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import GUARD_ATOL, calibrated_peers  # noqa: E402
from timing import interleaved_seconds, print_against_baseline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--models", default="Unet/resnet34")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    images = torch.randn(1, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {args.threads} thread(s), input 1x3x{args.size}x{args.size}, {args.rounds} "
          f"interleaved rounds, process CPU time; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, baseline, reference, exact in calibrated_peers(args.models, images):
            fp32_graph = Path(tmp) / f"{name.replace('/', '_')}.onnx"
            report = export_onnx(copy.deepcopy(baseline), fp32_graph, in_channels=3, name=name,
                                 check_sizes=((96, 160),), atol=GUARD_ATOL)
            print(f"  {name}: exported by {'torch.export' if report.exporter == 'dynamo' else 'TorchScript'}, "
                  f"opset {report.opset}")
            calibration = [torch.randn(1, 3, args.size, args.size) for _ in range(args.calibration)]
            int8_graph = quantize_int8(fp32_graph, Path(tmp) / "int8.onnx", calibration)
            paths = {"smp eager fp32": baseline,
                     "onnxruntime fp32": OnnxRuntimeModel(fp32_graph, threads=args.threads),
                     "bf16 autocast NCHW": Bf16Model(copy.deepcopy(baseline)).eval(),
                     "bf16 autocast channels_last": Bf16Model(copy.deepcopy(baseline), channels_last=True).eval(),
                     "onnxruntime int8 (QDQ, per-channel)": OnnxRuntimeModel(int8_graph, threads=args.threads)}
            int8_runtimes = {"onnxruntime": paths["onnxruntime int8 (QDQ, per-channel)"]}
            if openvino_available():  # optional: the same graphs on OpenVINO
                paths["openvino fp32"] = OpenVinoModel(fp32_graph, threads=args.threads, name=name)
                paths["openvino bf16 (fp32 graph, bf16 hint)"] = OpenVinoModel(fp32_graph, threads=args.threads,
                                                                               precision="bf16", name=name)
                try:
                    paths["openvino int8 (same QDQ graph)"] = OpenVinoModel(int8_graph, threads=args.threads,
                                                                            precision="int8", name=name)
                    int8_runtimes["openvino"] = paths["openvino int8 (same QDQ graph)"]
                except PixelsegError as error:
                    print(f"  {name} | {error}")
            # pixelseg's default int8 path: the runtime pixelseg export records as fastest (1 thread, CPU time)
            recorded = cpu_seconds_per_image(int8_runtimes, calibration[:2])
            chosen = min(recorded, key=recorded.__getitem__)
            default_label = f"pixelseg int8 default (auto: {chosen})"
            paths[default_label] = int8_runtimes[chosen]
            for label, run in paths.items():  # equality against float64, and the warm-up call
                with torch.inference_mode():
                    check = within_float32_error(run(images), reference, exact)
                verdict = ("within 2x smp fp32's error" if check.passed else "beyond 2x smp fp32's error") \
                    if label.endswith("fp32") else "reduced precision"
                print(f"  {name} | {label:40s} max|Δ float64| {check.error:.2e} (smp fp32 {check.own_error:.2e}), "
                      f"labels = float64 {100 * check.labels:.3f}%  [{verdict}]")
            seconds = interleaved_seconds(paths, images, args.rounds, clock=time.process_time)
            print_against_baseline(name, seconds, "smp eager fp32", 40)
            median = {label: statistics.median(values) for label, values in seconds.items()}
            ratio = {label: median["smp eager fp32"] / value for label, value in median.items()}
            bf16_best = max(ratio[label] for label in ratio if "bf16" in label)
            print(f"  {name} | targets (medians): int8 default {ratio[default_label]:.2f}x (>= 4x: "
                  f"{'met' if ratio[default_label] >= 4 else 'NOT met'}), best bf16 {bf16_best:.2f}x (>= 2.5x: "
                  f"{'met' if bf16_best >= 2.5 else 'NOT met'})")
            openvino = [label for label in ratio if label.startswith("openvino")]
            if openvino:
                best = max(openvino, key=ratio.__getitem__)
                share = median[best] / median[default_label]
                print(f"  {name} | OpenVINO's best mode: {best} {ratio[best]:.2f}x; ours / OpenVINO best "
                      f"{share:.2f} ({'no slower' if share >= 0.99 else 'slower'})")
            else:
                print(f"  {name} | OpenVINO not installed (pip install 'pixelseg[openvino]'): no comparison")


if __name__ == "__main__":
    main()
