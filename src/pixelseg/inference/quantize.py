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
import importlib.util
import tempfile
from collections.abc import Callable, Iterable
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
from .export import (
    INPUT,
    OPSET,
    ExportReport,
    OnnxRuntimeModel,
    export_model_dir,
    export_onnx,
    load_exportable,
    sample_size,
)
from .forward import forward_whole
from .speedups import seconds_per_call
from .tiling import has_valid_convolutions

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


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


class OpenVinoModel:
    """An ONNX graph compiled by OpenVINO for the CPU, called like the eager model (an optional runtime:
    ``pip install openvino``; it runs the QDQ graph of :func:`quantize_int8` with int8 kernels)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, geometry: nn.Module | None = None) -> None:
        import openvino as ov

        properties: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", properties)
        except Exception as error:  # OpenVINO's own exception types
            raise PixelsegError(f"OpenVINO cannot load the graph ({str(error).strip()[:200]})", path) from None
        if geometry is not None and has_valid_convolutions(geometry):
            self.input_size_for = geometry.input_size_for

    def __call__(self, images: Tensor) -> Tensor:
        result = self.compiled(images.detach().float().cpu().contiguous().numpy())
        return torch.from_numpy(result[self.compiled.output(0)].copy())


def int8_runtimes(path: str | Path, model: nn.Module, threads: int | None = None) -> dict[str, Callable]:
    """The runtimes installed for the quantized graph: ONNX Runtime, and OpenVINO when it is installed and
    compiles the graph (its CPU plugin has no int8 kernel for some graphs, e.g. LinkNet's)."""
    runtimes: dict[str, Callable] = {"onnxruntime": OnnxRuntimeModel(path, threads=threads, geometry=model)}
    if openvino_available():
        try:
            runtimes["openvino"] = OpenVinoModel(path, threads=threads, geometry=model)
        except PixelsegError:
            pass
    return runtimes


def fastest(runtimes: dict[str, Callable], example: Tensor) -> tuple[str, Callable]:
    """The runtime that runs ``example`` fastest (the only one, untimed, when there is one)."""
    if len(runtimes) == 1:
        return next(iter(runtimes.items()))
    seconds = seconds_per_call(list(runtimes.values()), example)
    return min(zip(runtimes.items(), seconds, strict=True), key=lambda pair: pair[1])[0]


BF16_NOTE = ("bf16 runs as eager autocast (pixelseg predict --precision bf16): ONNX Runtime has no bf16 CPU "
             "kernels on x86, so the graph written is float32")


def export_with_precision(model_path: str | Path, out: str | Path, *, precision: str = "fp32",
                          format: str = "onnx", opset: int | None = None, calibration: int = CALIBRATION_IMAGES,
                          accept_drop: bool = False, limit: int | None = None) -> ExportReport:
    """``pixelseg export --precision``: fp32 as :func:`export.export_model_dir`; int8 writes the quantized
    graph (calibrated on ``calibration`` training images); bf16 writes the float32 graph once the bf16 eager
    path has passed. Both reduced precisions are gated on the validation split (``limit``: its first images
    only) and refused with the measured drop unless ``accept_drop``."""
    check_precision(precision)
    opset = opset or OPSET
    if precision == "fp32":
        return export_model_dir(model_path, out, format=format, opset=opset)
    if format != "onnx":
        raise PixelsegError(f"unknown export format '{format}' (supported: onnx)")
    if calibration < 1:
        raise PixelsegError(f"--calibration must be at least 1 image, got {calibration}")
    model_dir, model = load_exportable(model_path)
    config, info = saved_data(model, model_dir)
    name = model.pixelseg_config.get("name", str(model_dir))
    in_channels = model.pixelseg_config.get("in_channels", 3)
    out = Path(out)
    if precision == "bf16":
        example = torch.randn(1, in_channels, *sample_size(model, 256))
        gates = measure_gates(model, {"": bf16_model(model, example)}, precision, config, info, limit=limit)
        enforce(gates, accept_drop=accept_drop, name=name)
        report = export_onnx(model, out, in_channels=in_channels, opset=opset, name=name)
        report.notes += [gates[0].line(), BF16_NOTE]
    else:
        partial = out.with_name(out.name + ".part")
        with tempfile.TemporaryDirectory(prefix="pixelseg-export-") as folder:
            fp32 = export_onnx(model, Path(folder) / "fp32.onnx", in_channels=in_channels, opset=opset, name=name)
            try:
                quantize_int8(fp32.path, partial, split_images(config, info, config.train_split, calibration))
                gates = measure_gates(model, int8_runtimes(partial, model), precision, config, info, limit=limit)
                enforce(gates, accept_drop=accept_drop, name=name)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        partial.replace(out)
        report = ExportReport(out, opset, fp32.max_abs_diff, exporter=fp32.exporter)
        used = len(split_images(config, info, config.train_split, calibration))
        report.notes += [*(gate.line() for gate in gates),
                         f"calibrated on {used} {config.train_split} image(s); per-channel int8 weights, QDQ"]
    report.precision = precision
    return report
