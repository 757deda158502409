"""How logits are computed for prediction: the backend (eager PyTorch, optionally optimised; ONNX Runtime or
OpenVINO on the exported graph, or ``auto``: the faster of the two), whole-image or tiled inference, and
test-time augmentation.

``auto`` runs the runtime that ``pixelseg export`` measured fastest (the ``fastest`` of the graph's JSON
metadata, ``inference.export.read_metadata``) when it is installed and compiles the graph, else the faster
of the installed ones timed on one image. int8 always runs a graph: for it the default backend, ``torch``,
means ``auto``."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PixelsegError
from . import openvino_backend
from .forward import forward_whole
from .quantize import check_precision
from .tiling import tiled_logits

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Runner = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("torch", "onnxruntime", "openvino", "auto")
GRAPH_FILES = {"fp32": "model.onnx", "bf16": "model.onnx", "int8": "model.int8.onnx"}  # as pixelseg export names them


@dataclass
class InferenceOptions:
    """How logits are computed: backend, speed-ups, tiling and test-time augmentation."""

    backend: str = "torch"  # "torch" (eager), "onnxruntime" or "openvino" (the graph of ``pixelseg export``), "auto"
    optimize: bool = False  # eager speed-ups: batch-norm folding + channels_last (inference.speedups)
    compile: bool = False  # also torch.compile the eager model
    threads: int | None = None  # intra-op threads (PyTorch or ONNX Runtime)
    tile: int | None = None  # tile side for overlap-tile / sliding-window inference (None: whole image)
    overlap: int = 64  # sliding-window overlap (and streaming context: half of it)
    tile_batch: int = 1  # tiles per forward pass
    blend: str = "gaussian"  # "gaussian", "cosine" or "exact"
    tta_scales: Sequence[float] | None = None  # inference.tta: average over scales ...
    tta_flip: bool = False  # ... the left-right flip ...
    tta_rotate: bool = False  # ... and the quarter turns
    stream: bool = False  # read window by window, write a tiled TIFF of labels (images larger than memory)
    precision: str = "fp32"  # "bf16": eager autocast or OpenVINO; "int8": the quantized graph (inference.quantize)
    calibration: int = 16  # int8 without a saved model.int8.onnx: training images to calibrate on

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise PixelsegError(f"unknown backend '{self.backend}' (choose one of: {', '.join(BACKENDS)})")
        if self.runtime != "torch" and (self.optimize or self.compile):
            raise PixelsegError(f"--optimize/--compile apply to the torch backend; --backend {self.runtime} "
                                "optimises its graph")
        check_precision(self.precision)
        if self.precision == "bf16" and self.backend == "onnxruntime":
            raise PixelsegError("--precision bf16: ONNX Runtime has no bf16 CPU kernels; use --backend torch "
                                "(eager autocast), openvino or auto")
        if self.runtime == "openvino":
            openvino_backend.require_openvino()
        if self.precision != "fp32" and (self.optimize or self.compile):
            raise PixelsegError(f"--optimize/--compile apply to fp32; --precision {self.precision} picks its own "
                                "speed-ups")
        if self.tile is not None and self.tile < 1:
            raise PixelsegError(f"--tile must be positive, not {self.tile}")
        if self.stream and self.uses_tta:
            raise PixelsegError("--stream does not combine with test-time augmentation")

    @property
    def runtime(self) -> str:
        """The backend that runs: ``backend``, except that int8 (always a graph) takes ``torch`` for ``auto``."""
        return "auto" if self.precision == "int8" and self.backend == "torch" else self.backend

    @property
    def uses_tta(self) -> bool:
        return self.tta_scales is not None or self.tta_flip or self.tta_rotate


def onnx_runner(model: torch.nn.Module, model_dir: Path, threads: int | None) -> LogitsFn:
    """ONNX Runtime on ``model.onnx`` next to the saved model (as ``pixelseg export`` writes it), else on a
    fresh export in a temporary folder (removed once the session has loaded it)."""
    return graph_runner(model, model_dir, precision="fp32", backend="onnxruntime", threads=threads)


def graph_runner(model: torch.nn.Module, model_dir: Path, *, precision: str, backend: str, threads: int | None,
                 calibration: int = 16) -> LogitsFn:
    """The exported graph of ``model`` at ``precision`` (:data:`GRAPH_FILES` next to the saved model, else a
    fresh export, and for int8 a fresh quantization, in a temporary folder) on ``backend``: ``onnxruntime``,
    ``openvino`` or ``auto`` (for bf16, ``auto`` also weighs eager autocast)."""
    from .export import export_onnx

    saved = model_dir / GRAPH_FILES[precision]
    if saved.is_file():
        return _graph_backend(model, saved, precision, backend, threads)
    name = model.pixelseg_config.get("name", str(model_dir))
    if precision == "bf16" and not openvino_backend.openvino_available():  # nothing to weigh eager autocast against
        return _graph_backend(model, None, precision, backend, threads)
    with tempfile.TemporaryDirectory(prefix="pixelseg-graph-") as folder:
        graph = Path(folder) / GRAPH_FILES[precision]
        fp32 = export_onnx(model, Path(folder) / "model.onnx", in_channels=model.pixelseg_config.get("in_channels", 3),
                           name=name).path
        if precision == "int8":
            from .quantize import quantize_int8, saved_data, split_images

            config, info = saved_data(model, model_dir)
            quantize_int8(fp32, graph, split_images(config, info, config.train_split, calibration))
        return _graph_backend(model, graph, precision, backend, threads)  # loaded before the folder goes


def _graph_backend(model: torch.nn.Module, graph: Path | None, precision: str, backend: str,
                   threads: int | None) -> LogitsFn:
    """``graph`` on the named backend, or on ``auto``'s pick: the fastest recorded in the graph's metadata
    when it is installed and compiles, else the fastest of the installed ones timed on one image (for bf16,
    eager autocast is one of them)."""
    from .export import OnnxRuntimeModel, read_metadata, sample_size
    from .openvino_backend import OpenVinoModel
    from .quantize import bf16_model, fastest, graph_runtimes

    name = model.pixelseg_config.get("name", "model")
    example = torch.randn(1, model.pixelseg_config.get("in_channels", 3), *sample_size(model, 128))
    if backend == "openvino":
        return OpenVinoModel(graph, threads=threads, geometry=model, precision=precision, name=name)
    if backend == "onnxruntime":
        return OnnxRuntimeModel(graph, threads=threads, geometry=model)
    metadata = read_metadata(graph) if graph is not None else {}
    recorded = metadata.get("fastest") if metadata.get("precision") == precision else None
    runtimes: dict[str, LogitsFn] = {}
    if precision == "bf16":
        runtimes["torch"] = bf16_model(model, example)
        if recorded == "torch":
            return runtimes["torch"]
    if graph is not None:
        found, _ = graph_runtimes(graph, model, precision=precision, threads=threads, name=name)
        if recorded in found:
            return found[recorded]
        runtimes.update(found)
    return fastest(runtimes, example)[1]


def build_runner(model: torch.nn.Module, model_dir: Path, options: InferenceOptions, device: str = "cpu") -> Runner:
    """The callable that maps an image batch to logits: eager, optimised eager or bf16 autocast; the exported
    graph (fp32, int8, or fp32 at bf16 on OpenVINO) on ONNX Runtime, OpenVINO or ``auto``'s pick (+ TTA)."""
    from .export import sample_size
    from .quantize import bf16_model
    from .speedups import optimize_for_inference
    from .tta import TestTimeAugmented, check_scales

    if options.threads:
        torch.set_num_threads(options.threads)
    runner: Runner = model
    if options.precision == "bf16" and options.runtime == "torch":
        in_channels = model.pixelseg_config.get("in_channels", 3)
        runner = bf16_model(model, torch.randn(1, in_channels, *sample_size(model, 128), device=device))
    elif options.runtime != "torch":
        runner = graph_runner(model, model_dir, precision=options.precision, backend=options.runtime,
                              threads=options.threads, calibration=options.calibration)
    elif options.optimize or options.compile:
        in_channels = model.pixelseg_config.get("in_channels", 3)
        example = torch.randn(1, in_channels, *sample_size(model, 64), device=device)
        runner = optimize_for_inference(model, example, compile=options.compile)
    if options.uses_tta:
        scales = check_scales(options.tta_scales if options.tta_scales is not None else (1.0,))
        runner = TestTimeAugmented(runner, scales, options.tta_flip, options.tta_rotate)  # type: ignore[arg-type]
    return runner


def logits_function(runner: Runner, options: InferenceOptions) -> LogitsFn:
    """Whole-image inference, or tiled when ``options.tile`` is set (overlap-tile for valid convolutions)."""
    if options.tile is None:
        return lambda images: forward_whole(runner, images)  # type: ignore[arg-type]
    return lambda images: tiled_logits(runner, images, tile=options.tile, overlap=options.overlap,  # type: ignore
                                       batch=options.tile_batch, blend=options.blend)  # type: ignore[arg-type]
