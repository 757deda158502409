"""Reduced-precision inference on the CPU: bf16 autocast (eager) and int8 static quantization (ONNX Runtime),
each held to an accuracy gate measured on the model's own validation split.

* **bf16**: the eager model under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (oneDNN's AVX512-BF16 /
  AMX kernels), in channels_last when timing says it is faster. ONNX Runtime has no bf16 CPU kernels on
  x86 (its bf16 fast-math mode is ARM64-only), so eager autocast is the one bf16 backend.
* **int8**: the checked fp32 ONNX graph, pre-processed (shape inference, graph optimisation) and quantized
  statically by ``onnxruntime.quantization``: QDQ format, per-channel int8 weights, uint8 activations whose
  ranges are calibrated (min/max) on ``N`` images of the training split of the model's own dataset, rebuilt
  from the data config saved with the model (``data.build.build_eval_dataset``: unaugmented, normalised).
* **Gate**: the mIoU of the reduced-precision path and of the fp32 eager model on the validation split;
  the drop may be at most :data:`MAX_DROP` points (0.5 for bf16, 1 for int8), else
  :class:`AccuracyDropError`, naming the measured drop.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.build import DatasetInfo, build_eval_dataset
from ..data.config import DataConfig
from ..errors import PixelsegError
from ..io.config import build_typed
from ..metrics.confusion import ConfusionMatrix
from ..models.base import main_logits
from . import openvino_backend
from .export import (
    INPUT,
    OPSET,
    ExportReport,
    OnnxRuntimeModel,
    export_onnx,
    load_exportable,
    sample_size,
    write_metadata,
)
from .forward import forward_whole
from .openvino_backend import OpenVinoModel
from .speedups import seconds_per_call

PRECISIONS = ("fp32", "bf16", "int8")
MAX_DROP = {"fp32": 0.0, "bf16": 0.5, "int8": 1.0}  # mIoU points (of 100) below fp32 on the validation split
CALIBRATION_IMAGES = 16


class AccuracyDropError(PixelsegError):
    """A reduced-precision path whose validation mIoU falls further below fp32 than its gate allows."""


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PixelsegError(f"unknown precision '{precision}' (choose one of: {', '.join(PRECISIONS)})")


class Bf16Model(nn.Module):
    """The eager model under CPU bf16 autocast; float32 logits out; keeps ``input_size_for``."""

    def __init__(self, model: nn.Module, *, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        if hasattr(model, "input_size_for"):
            self.input_size_for = model.input_size_for

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = main_logits(self.model(images))
        return logits.float().contiguous()


def bf16_model(model: nn.Module, example: Tensor | None = None) -> Bf16Model:
    """A bf16-autocast copy of the eval-mode ``model``: channels_last if it runs ``example`` faster (with no
    example, NCHW)."""
    model = copy.deepcopy(model).eval()
    if example is None:
        return Bf16Model(model).eval()
    nhwc, nchw = Bf16Model(copy.deepcopy(model), channels_last=True).eval(), Bf16Model(model).eval()
    seconds_nhwc, seconds_nchw = seconds_per_call([nhwc, nchw], example)
    return nhwc if seconds_nhwc < seconds_nchw else nchw


def saved_data(model: nn.Module, model_dir: Path) -> tuple[DataConfig, DatasetInfo]:
    """The data config and data facts saved with a model by ``pixelseg train``."""
    data = getattr(model, "pixelseg_config", {}).get("data")
    if not isinstance(data, dict) or not data.get("dataset"):
        raise PixelsegError("the model config does not name its dataset (needed to calibrate and to measure "
                            "the accuracy of a reduced precision)", model_dir / "config.json")
    try:
        info = DatasetInfo(**{k: v for k, v in data.items() if k != "dataset"})
    except TypeError as err:
        raise PixelsegError(f"the model config's data section is not valid ({err})",
                            model_dir / "config.json") from None
    return build_typed(DataConfig, data["dataset"], "data"), info


def split_images(config: DataConfig, info: DatasetInfo, split: str, count: int | None = None) -> list[Tensor]:
    """Up to ``count`` normalised images ``(1, C, H, W)`` of ``split`` (every image when ``count`` is None)."""
    dataset = build_eval_dataset(config, info, split)
    total = len(dataset) if count is None else min(count, len(dataset))  # type: ignore[arg-type]
    return [dataset[i][0].unsqueeze(0) for i in range(total)]


def quantize_int8(fp32_graph: str | Path, out: str | Path, calibration: Iterable[Tensor]) -> Path:
    """Static QDQ quantization of ``fp32_graph`` into ``out``: per-channel int8 weights, uint8 activations
    with min/max ranges over the ``calibration`` images (each ``(1, C, H, W)``, any size)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process


    images = [image.detach().float().cpu().contiguous().numpy() for image in calibration]
    if not images:
        raise PixelsegError("int8 quantization needs at least one calibration image")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{INPUT: image} for image in images])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="pixelseg-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibTensorRangeSymmetric": False})
    return out


def miou_points(forward: Callable[[Tensor], Tensor], config: DataConfig, info: DatasetInfo, split: str,
                limit: int | None = None) -> float:
    """mIoU (in points, of 100) of ``forward`` (whole-image logits) on ``split`` of the saved dataset."""
    dataset = build_eval_dataset(config, info, split)
    matrix = ConfusionMatrix(info.num_classes, ignore_index=info.ignore_index)
    total = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    with torch.inference_mode():
        for i in range(total):
            image, mask = dataset[i][:2]
            matrix.update(forward_whole(forward, image.unsqueeze(0)).argmax(1), mask.unsqueeze(0))  # type: ignore
    return 100.0 * float(matrix.mean_iou())


@dataclass
class Gate:
    """The accuracy gate's measurement: fp32 and reduced-precision mIoU (points) on ``split``."""

    precision: str
    split: str
    images: int
    miou_fp32: float
    miou: float
    backend: str = ""  # int8: the runtime that ran the quantized graph

    @property
    def drop(self) -> float:
        return self.miou_fp32 - self.miou

    @property
    def max_drop(self) -> float:
        return MAX_DROP[self.precision]

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def line(self) -> str:
        runtime = f" ({self.backend})" if self.backend else ""
        return (f"{self.precision}{runtime} mIoU {self.miou:.2f} vs fp32 {self.miou_fp32:.2f} on {self.images} "
                f"{self.split} image(s): drop {self.drop:.2f} point(s) (gate {self.max_drop:g})")


def measure_gates(model: nn.Module, candidates: dict[str, Callable[[Tensor], Tensor]], precision: str,
                  config: DataConfig, info: DatasetInfo, *, split: str | None = None,
                  limit: int | None = None) -> list[Gate]:
    """The gate of each candidate (backend name -> logits function) against the fp32 eager ``model``."""
    split = split or config.val_split
    dataset = build_eval_dataset(config, info, split)
    images = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    reference = miou_points(model.eval(), config, info, split, limit)
    return [Gate(precision, split, images, reference, miou_points(run, config, info, split, limit), backend)
            for backend, run in candidates.items()]


def enforce(gates: Gate | list[Gate], *, accept_drop: bool = False, name: str = "model") -> None:
    """Refuse (``AccuracyDropError``) gates that did not pass, unless ``accept_drop``."""
    failed = [gate for gate in ([gates] if isinstance(gates, Gate) else gates) if not gate.passed]
    if failed and not accept_drop:
        raise AccuracyDropError(f"refusing the {failed[0].precision} export of '{name}': "
                                f"{'; '.join(gate.line() for gate in failed)}; --accept-drop writes it anyway")


def graph_runtimes(path: str | Path, model: nn.Module, *, precision: str = "int8", threads: int | None = None,
                   name: str = "model") -> tuple[dict[str, Callable], list[str]]:
    """The runtimes installed for the exported graph at ``precision``: ONNX Runtime (fp32 and int8; it has no
    bf16 CPU kernels on x86) and OpenVINO when it is installed and compiles the graph (its CPU plugin has no
    int8 kernel for some graphs, e.g. LinkNet's). Also the one-line reasons of the runtimes left out."""
    runtimes: dict[str, Callable] = {}
    refused: list[str] = []
    if precision != "bf16":
        runtimes["onnxruntime"] = OnnxRuntimeModel(path, threads=threads, geometry=model)
    if openvino_backend.openvino_available():
        try:
            runtimes["openvino"] = OpenVinoModel(path, threads=threads, geometry=model, precision=precision,
                                                 name=name)
        except PixelsegError as error:  # its message names the model; the path may be a temporary one
            message = str(error)
            refused.append(message.removeprefix(f"{error.path}: ") if error.path else message)
    return runtimes, refused


def fastest(runtimes: dict[str, Callable], example: Tensor) -> tuple[str, Callable]:
    """The runtime that runs ``example`` fastest (the only one, untimed, when there is one)."""
    if len(runtimes) == 1:
        return next(iter(runtimes.items()))
    seconds = seconds_per_call(list(runtimes.values()), example)
    return min(zip(runtimes.items(), seconds, strict=True), key=lambda pair: pair[1])[0]


@contextmanager
def _one_thread() -> Iterator[None]:
    """PyTorch at 1 thread (eager candidates are timed like the runtimes, which are built with 1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_seconds_per_image(runtimes: dict[str, Callable], images: list[Tensor]) -> dict[str, float]:
    """Process CPU seconds per image of each runtime (whole-image logits; the graph runtimes built with 1
    thread, eager PyTorch set to 1) over ``images``, after one warm-up call each. The runtimes take turns image
    by image, so that other processes' load falls on all alike; CPU time does not count the time they take."""
    totals = dict.fromkeys(runtimes, 0.0)
    with torch.inference_mode(), _one_thread():
        for run in runtimes.values():
            forward_whole(run, images[0])  # type: ignore[arg-type]
        for image in images:
            for label, run in runtimes.items():
                start = time.process_time()
                forward_whole(run, image)  # type: ignore[arg-type]
                totals[label] += time.process_time() - start
    return {label: total / len(images) for label, total in totals.items()}


def _record_timing(report: ExportReport, runtimes: dict[str, Callable], images: list[Tensor], what: str) -> None:
    """Time ``runtimes`` on ``images`` (1 thread) into the report: per-image CPU seconds and the fastest."""
    report.cpu_seconds = {label: round(seconds, 6)
                          for label, seconds in cpu_seconds_per_image(runtimes, images).items()}
    report.fastest = min(report.cpu_seconds, key=report.cpu_seconds.__getitem__)
    report.metadata["timed_on"] = f"{len(images)} {what}, 1 thread, process CPU time"
    if len(runtimes) > 1:
        shown = ", ".join(f"{label} {1000 * seconds:.1f} ms" for label, seconds in report.cpu_seconds.items())
        report.notes.append(f"CPU time per image at 1 thread on {len(images)} {what}: {shown}; "
                            f"--backend auto runs {report.fastest}")


BF16_NOTE = ("the graph written is float32: bf16 runs as eager autocast (pixelseg predict --precision bf16) or, "
             "with OpenVINO, as this graph at bf16 inference precision; ONNX Runtime has no bf16 CPU kernels on x86")
TIMING_SIDE = 256  # fp32 exports are timed on random images of about this side (no data needed)


def _fp32_timing_images(model: nn.Module, model_dir: Path, in_channels: int, count: int
                        ) -> tuple[list[Tensor], str]:
    """The images an fp32 export is timed on: those of its training split when the dataset is at hand (so
    that its timings compare with the bf16 and int8 exports'), else random ones (fp32 needs no data)."""
    try:
        config, info = saved_data(model, model_dir)
        images = split_images(config, info, config.train_split, max(count, 1))
        if images:
            return images, f"{config.train_split} image(s)"
    except (PixelsegError, OSError):
        pass
    return [torch.randn(1, in_channels, *sample_size(model, TIMING_SIDE)) for _ in range(2)], "random image(s)"


def export_with_precision(model_path: str | Path, out: str | Path, *, precision: str = "fp32",
                          format: str = "onnx", opset: int | None = None, calibration: int = CALIBRATION_IMAGES,
                          accept_drop: bool = False, limit: int | None = None) -> ExportReport:
    """``pixelseg export --precision``: the graph, and its JSON metadata next to it (``model.int8.onnx.json``,
    :func:`export.write_metadata`). fp32 as :func:`export.export_model_dir`; int8 writes the quantized graph
    (calibrated on ``calibration`` training images); bf16 writes the float32 graph once the bf16 paths (eager
    autocast; OpenVINO at bf16 when installed) have passed. Both reduced precisions are gated on the validation
    split (``limit``: its first images only), every installed runtime alike, and refused with the measured
    drop unless ``accept_drop``.

    The metadata records each runtime's CPU time per image at 1 thread (int8: always, on the calibration
    images; bf16: on them; fp32: on them when the dataset is at hand, else on random images, when OpenVINO
    offers a second runtime) and the fastest,
    which ``pixelseg predict --backend auto`` runs."""
    check_precision(precision)
    opset = opset or OPSET
    if format != "onnx":
        raise PixelsegError(f"unknown export format '{format}' (supported: onnx)")
    if precision != "fp32" and calibration < 1:
        raise PixelsegError(f"--calibration must be at least 1 image, got {calibration}")
    model_dir, model = load_exportable(model_path)
    name = model.pixelseg_config.get("name", str(model_dir))
    in_channels = model.pixelseg_config.get("in_channels", 3)
    out = Path(out)
    if precision == "fp32":
        report = export_onnx(model, out, in_channels=in_channels, opset=opset, name=name)
        if openvino_backend.openvino_available():
            runtimes, refused = graph_runtimes(out, model, precision="fp32", threads=1, name=name)
            report.notes += refused
            images, what = _fp32_timing_images(model, model_dir, in_channels, calibration)
            _record_timing(report, runtimes, images, what)
        write_metadata(report)
        return report
    config, info = saved_data(model, model_dir)
    train_images = split_images(config, info, config.train_split, calibration)
    what = f"{config.train_split} image(s)"
    partial = out.with_name(out.name + ".part")
    try:
        with tempfile.TemporaryDirectory(prefix="pixelseg-export-") as folder:
            if precision == "bf16":
                fp32 = export_onnx(model, partial, in_channels=in_channels, opset=opset, name=name)
                with _one_thread():  # its layout is chosen by timing, as it is timed below
                    candidates = {"torch": bf16_model(model, torch.randn(1, in_channels, *sample_size(model, 256)))}
                runtimes, refused = graph_runtimes(partial, model, precision="bf16", threads=1, name=name)
                candidates.update(runtimes)
            else:
                fp32 = export_onnx(model, Path(folder) / "fp32.onnx", in_channels=in_channels, opset=opset,
                                   name=name)
                quantize_int8(fp32.path, partial, train_images)
                candidates, refused = graph_runtimes(partial, model, precision="int8", threads=1, name=name)
            gates = measure_gates(model, candidates, precision, config, info, limit=limit)
            passing = [gate for gate in gates if gate.passed]
            # A runtime that fails the gate is left out (``auto`` never picks it) while another passes; the export
            # is refused only when none does. E.g. the TorchScript exporter's graph of a U-Net in int8: ONNX Runtime
            # inside the gate, OpenVINO 24 points below fp32 at dynamic sizes (benchmarks/RESULTS.md, CamVid).
            enforce(gates if not passing else [], accept_drop=accept_drop, name=name)
            if passing and not accept_drop:
                candidates = {gate.backend: candidates[gate.backend] for gate in passing}
            left_out = [f"left out: {gate.line()}" for gate in gates if not gate.passed and passing and not accept_drop]
            report = ExportReport(out, fp32.opset, fp32.max_abs_diff, precision=precision, exporter=fp32.exporter,
                                  notes=[gate.line() for gate in gates] + left_out + refused)
            if precision == "int8" or len(candidates) > 1:
                _record_timing(report, candidates, train_images, what)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    report.notes.append(BF16_NOTE if precision == "bf16" else
                        f"calibrated on {len(train_images)} {what}; per-channel int8 weights, QDQ")
    report.metadata.update(model=name, calibration_images=len(train_images) if precision == "int8" else 0,
                           gates=[{"backend": gate.backend or "torch", "split": gate.split, "images": gate.images,
                                   "miou_fp32": round(gate.miou_fp32, 4), "miou": round(gate.miou, 4),
                                   "drop": round(gate.drop, 4), "max_drop": gate.max_drop} for gate in gates])
    write_metadata(report)
    return report
