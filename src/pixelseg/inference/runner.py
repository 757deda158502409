"""How logits are computed for prediction: the backend (eager PyTorch, optionally optimised, or ONNX
Runtime on the exported graph), whole-image or tiled inference, and test-time augmentation."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PixelsegError
from .forward import forward_whole
from .quantize import check_precision
from .tiling import tiled_logits

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Runner = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("torch", "onnxruntime")


@dataclass
class InferenceOptions:
    """How logits are computed: backend, speed-ups, tiling and test-time augmentation."""

    backend: str = "torch"  # "torch" (eager) or "onnxruntime" (the graph of ``pixelseg export``)
    optimize: bool = False  # eager speed-ups: batch-norm folding + channels_last (inference.speedups)
    compile: bool = False  # also torch.compile the eager model
    threads: int | None = None  # intra-op threads (PyTorch or ONNX Runtime)
    tile: int | None = None  # tile side for overlap-tile / sliding-window inference (None: whole image)
    overlap: int = 64  # sliding-window overlap (and streaming context: half of it)
    tile_batch: int = 1  # tiles per forward pass
    blend: str = "gaussian"  # "gaussian", "cosine" or "exact"
    tta_scales: Sequence[float] | None = None  # inference.tta: average over scales ...
    tta_flip: bool = False  # ... and the left-right flip
    stream: bool = False  # read window by window, write a tiled TIFF of labels (images larger than memory)
    precision: str = "fp32"  # "bf16": eager autocast; "int8": ONNX Runtime on the quantized graph (inference.quantize)
    calibration: int = 16  # int8 without a saved model.int8.onnx: training images to calibrate on

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise PixelsegError(f"unknown backend '{self.backend}' (choose one of: {', '.join(BACKENDS)})")
        if self.backend == "onnxruntime" and (self.optimize or self.compile):
            raise PixelsegError("--optimize/--compile apply to the torch backend; ONNX Runtime optimises its graph")
        check_precision(self.precision)
        if self.precision == "bf16" and self.backend != "torch":
            raise PixelsegError("--precision bf16 runs the eager model under autocast; use --backend torch")
        if self.precision != "fp32" and (self.optimize or self.compile):
            raise PixelsegError(f"--optimize/--compile apply to fp32; --precision {self.precision} picks its own "
                                "speed-ups")
        if self.tile is not None and self.tile < 1:
            raise PixelsegError(f"--tile must be positive, not {self.tile}")
        if self.stream and (self.tta_scales is not None or self.tta_flip):
            raise PixelsegError("--stream does not combine with test-time augmentation")

    @property
    def uses_tta(self) -> bool:
        return self.tta_scales is not None or self.tta_flip


def onnx_runner(model: torch.nn.Module, model_dir: Path, threads: int | None) -> LogitsFn:
    """ONNX Runtime on ``model.onnx`` next to the saved model (as ``pixelseg export`` writes it), else on a
    fresh export in a temporary folder (removed once the session has loaded it)."""
    from .export import OnnxRuntimeModel, export_onnx

    saved = model_dir / "model.onnx"
    if saved.is_file():
        return OnnxRuntimeModel(saved, threads=threads, geometry=model)
    with tempfile.TemporaryDirectory(prefix="pixelseg-onnx-") as folder:
        target = Path(folder) / "model.onnx"
        export_onnx(model, target, in_channels=model.pixelseg_config.get("in_channels", 3),
                    name=model.pixelseg_config.get("name", str(model_dir)))
        return OnnxRuntimeModel(target, threads=threads, geometry=model)


def int8_runner(model: torch.nn.Module, model_dir: Path, threads: int | None, calibration: int) -> LogitsFn:
    """The faster installed runtime (ONNX Runtime, or OpenVINO when installed; timed on one image) on
    ``model.int8.onnx`` next to the saved model (``pixelseg export --precision int8``), else on a fresh,
    ungated quantization calibrated on ``calibration`` training images (in a temporary folder)."""
    from .export import export_onnx, sample_size
    from .quantize import fastest, int8_runtimes, quantize_int8, saved_data, split_images

    example = torch.randn(1, model.pixelseg_config.get("in_channels", 3), *sample_size(model, 128))
    saved = model_dir / "model.int8.onnx"
    if saved.is_file():
        return fastest(int8_runtimes(saved, model, threads), example)[1]
    config, info = saved_data(model, model_dir)
    with tempfile.TemporaryDirectory(prefix="pixelseg-int8-") as folder:
        fp32 = Path(folder) / "model.onnx"
        export_onnx(model, fp32, in_channels=model.pixelseg_config.get("in_channels", 3),
                    name=model.pixelseg_config.get("name", str(model_dir)))
        target = quantize_int8(fp32, Path(folder) / "model.int8.onnx",
                               split_images(config, info, config.train_split, calibration))
        return fastest(int8_runtimes(target, model, threads), example)[1]


def build_runner(model: torch.nn.Module, model_dir: Path, options: InferenceOptions, device: str = "cpu") -> Runner:
    """The callable that maps an image batch to logits: eager, optimised eager, ONNX Runtime, bf16 autocast or
    int8 ONNX Runtime (+ TTA)."""
    from .export import sample_size
    from .quantize import bf16_model
    from .speedups import optimize_for_inference
    from .tta import TestTimeAugmented, check_scales

    if options.threads:
        torch.set_num_threads(options.threads)
    runner: Runner = model
    if options.precision == "int8":
        runner = int8_runner(model, model_dir, options.threads, options.calibration)
    elif options.precision == "bf16":
        in_channels = model.pixelseg_config.get("in_channels", 3)
        runner = bf16_model(model, torch.randn(1, in_channels, *sample_size(model, 128), device=device))
    elif options.backend == "onnxruntime":
        runner = onnx_runner(model, model_dir, options.threads)
    elif options.optimize or options.compile:
        in_channels = model.pixelseg_config.get("in_channels", 3)
        example = torch.randn(1, in_channels, *sample_size(model, 64), device=device)
        runner = optimize_for_inference(model, example, compile=options.compile)
    if options.uses_tta:
        scales = check_scales(options.tta_scales if options.tta_scales is not None else (1.0,))
        runner = TestTimeAugmented(runner, scales, options.tta_flip)  # type: ignore[arg-type]
    return runner


def logits_function(runner: Runner, options: InferenceOptions) -> LogitsFn:
    """Whole-image inference, or tiled when ``options.tile`` is set (overlap-tile for valid convolutions)."""
    if options.tile is None:
        return lambda images: forward_whole(runner, images)  # type: ignore[arg-type]
    return lambda images: tiled_logits(runner, images, tile=options.tile, overlap=options.overlap,  # type: ignore
                                       batch=options.tile_batch, blend=options.blend)  # type: ignore[arg-type]
