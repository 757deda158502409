"""``pixelseg predict``: index PNG + colour overlay for every image of a folder (or one file).

Each output is written atomically; an unreadable input is reported in one line and skipped, the
others are still predicted, and the command exits non-zero if any failed. Logits come from eager
PyTorch (optionally optimised, engine.speedups) or ONNX Runtime (engine.export), for the whole image or
tile by tile (engine.tiling), optionally averaged over test-time scales and flips (engine.tta). Under
``torchrun`` every process predicts its share of the files (``RANK``/``WORLD_SIZE``).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..data.folder import list_images, read_image
from ..data.transforms import normalize, to_chw_uint8
from ..errors import PixelsegError
from ..models.registry import from_pretrained
from ..io.checkpoint import atomic_write_bytes
from .evaluate import model_data_info, resolve_model_dir
from ..inference.forward import forward_whole
from ..inference.tiling import stream_predict, tiled_logits

if TYPE_CHECKING:
    from ..refiners.dense_crf import DenseCRFConfig


def list_inputs(path: str | Path, list_files: Callable[[Path], list[Path]] = list_images,
                what: str = "images") -> list[Path]:
    """``path`` itself, or the files of a folder that ``list_files`` finds (images by default)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_files(path)
        if not files:
            raise PixelsegError(f"no {what} found", path)
        return files
    raise PixelsegError("no such file or directory", path)


def colorize(labels: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return table[labels]


def overlay(image: Image.Image, labels: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = colorize(labels, palette).astype(np.float32)
    return Image.fromarray((rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def index_png(labels: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A palette ('P' mode) PNG: pixel values are class indices, viewers show the class colours."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [channel for colour in palette for channel in colour][: 256 * 3]
    image.putpalette(flat + [0] * (256 * 3 - len(flat)))
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


LogitsFn = Callable[[torch.Tensor], torch.Tensor]
REFINE_METHODS = ("crf",)
BACKENDS = ("torch", "onnxruntime")


def crf_labels(logits: torch.Tensor, image: Image.Image, config: DenseCRFConfig | None = None) -> np.ndarray:
    """Labels (H, W) of one image's logits (K, H, W) refined by the dense CRF (``--refine crf``)."""
    from ..refiners.dense_crf import refine_logits

    return refine_logits(logits, np.asarray(image.convert("RGB")), config).cpu().numpy()


@dataclass
class InferenceOptions:
    """How logits are computed: backend, speed-ups, tiling and test-time augmentation."""

    backend: str = "torch"  # "torch" (eager) or "onnxruntime" (the graph of ``pixelseg export``)
    optimize: bool = False  # eager speed-ups: batch-norm folding + channels_last (engine.speedups)
    compile: bool = False  # also torch.compile the eager model
    threads: int | None = None  # intra-op threads (PyTorch or ONNX Runtime)
    tile: int | None = None  # tile side for overlap-tile / sliding-window inference (None: whole image)
    overlap: int = 64  # sliding-window overlap (and streaming context: half of it)
    tile_batch: int = 1  # tiles per forward pass
    blend: str = "gaussian"  # "gaussian", "cosine" or "exact"
    tta_scales: Sequence[float] | None = None  # engine.tta: average over scales ...
    tta_flip: bool = False  # ... and the left-right flip
    stream: bool = False  # read window by window, write a tiled TIFF of labels (images larger than memory)

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise PixelsegError(f"unknown backend '{self.backend}' (choose one of: {', '.join(BACKENDS)})")
        if self.backend == "onnxruntime" and (self.optimize or self.compile):
            raise PixelsegError("--optimize/--compile apply to the torch backend; ONNX Runtime optimises its graph")
        if self.tile is not None and self.tile < 1:
            raise PixelsegError(f"--tile must be positive, not {self.tile}")
        if self.stream and (self.tta_scales is not None or self.tta_flip):
            raise PixelsegError("--stream does not combine with test-time augmentation")


def onnx_runner(model: torch.nn.Module, model_dir: Path, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime on ``model.onnx`` next to the saved model (as ``pixelseg export`` writes it), else on a
    fresh export in a temporary folder (removed once the session has loaded it)."""
    from ..inference.export import OnnxRuntimeModel, export_onnx

    saved = model_dir / "model.onnx"
    if saved.is_file():
        return OnnxRuntimeModel(saved, threads=threads, geometry=model)
    with tempfile.TemporaryDirectory(prefix="pixelseg-onnx-") as folder:
        target = Path(folder) / "model.onnx"
        export_onnx(model, target, in_channels=model.pixelseg_config.get("in_channels", 3),
                    name=model.pixelseg_config.get("name", str(model_dir)))
        return OnnxRuntimeModel(target, threads=threads, geometry=model)


def build_runner(model: torch.nn.Module, model_dir: Path, options: InferenceOptions,
                 device: str = "cpu") -> torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]:
    """The callable that maps an image batch to logits: eager, optimised eager or ONNX Runtime (+ TTA)."""
    from ..inference.export import sample_size
    from ..inference.speedups import optimize_for_inference
    from ..inference.tta import TestTimeAugmented, check_scales

    if options.threads:
        torch.set_num_threads(options.threads)
    runner: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] = model
    if options.backend == "onnxruntime":
        runner = onnx_runner(model, model_dir, options.threads)
    elif options.optimize or options.compile:
        in_channels = model.pixelseg_config.get("in_channels", 3)
        example = torch.randn(1, in_channels, *sample_size(model, 64), device=device)
        runner = optimize_for_inference(model, example, compile=options.compile)
    if options.tta_scales is not None or options.tta_flip:
        scales = check_scales(options.tta_scales if options.tta_scales is not None else (1.0,))
        runner = TestTimeAugmented(runner, scales, options.tta_flip)  # type: ignore[arg-type]
    return runner


def logits_function(runner: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
                    options: InferenceOptions) -> LogitsFn:
    """Whole-image inference, or tiled when ``options.tile`` is set (overlap-tile for valid convolutions)."""
    if options.tile is None:
        return lambda images: forward_whole(runner, images)  # type: ignore[arg-type]
    return lambda images: tiled_logits(runner, images, tile=options.tile, overlap=options.overlap,  # type: ignore
                                       batch=options.tile_batch, blend=options.blend)  # type: ignore[arg-type]


def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's ``RANK``/``WORLD_SIZE`` (``(0, 1)`` when run alone)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PixelsegError("RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank < world:
        raise PixelsegError(f"RANK {rank} is not in 0..WORLD_SIZE-1 ({world - 1})")
    return rank, world


def predict(model_path: str | Path, inputs: str | Path | Iterable[Path], out_dir: str | Path, *,
            device: str = "cpu", logits_fn: LogitsFn | None = None,
            on_error: Callable[[str], None] | None = None, refine: str | None = None,
            options: InferenceOptions | None = None, shard: tuple[int, int] = (0, 1),
            crf: DenseCRFConfig | None = None) -> PredictReport:
    """Segment every input image; write ``<stem>.png`` (index) and ``<stem>_overlay.png``.

    ``options`` choose the backend, speed-ups, tiling and TTA; ``logits_fn`` replaces all of that if
    given. ``refine="crf"`` post-processes the logits with the dense CRF (``classical.dense_crf``), with
    the parameters ``crf`` (default: ``DenseCRFConfig()``).
    ``shard=(rank, world)`` keeps every ``world``-th image from the ``rank``-th on (distributed
    prediction: each process writes the outputs of its own share). With ``options.stream`` each image
    is read window by window and written as ``<stem>.tif``, a tiled TIFF of class indices.
    """
    options = options or InferenceOptions()
    options.check()
    if refine is not None and refine not in REFINE_METHODS:
        raise PixelsegError(f"unknown refinement {refine!r}; choose one of: {', '.join(REFINE_METHODS)}")
    if refine is not None and options.stream:
        raise PixelsegError("--refine does not combine with --stream")
    if crf is not None and refine != "crf":
        raise PixelsegError("the dense CRF parameters (--crf-*) need --refine crf")
    model_dir = resolve_model_dir(model_path)
    model = from_pretrained(model_dir).to(device).eval()
    info, _ = model_data_info(model, model_dir)
    if info.spatial_dims == 3:  # a volumetric model (V-Net): whole volumes in, label volumes out
        return _predict_volumes(model, model_dir, info, inputs, out_dir, device, options, refine, shard, on_error)
    files = list_inputs(inputs) if isinstance(inputs, str | Path) else list(inputs)
    rank, world = shard
    files = files[rank::world]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = build_runner(model, model_dir, options, device) if logits_fn is None or options.stream else model
    run = logits_fn or logits_function(runner, options)
    report = PredictReport()

    def failed(message: str) -> None:
        report.failed.append(message)
        if on_error:
            on_error(message)

    for path in files:
        if options.stream:
            target = out_dir / f"{path.stem}.tif"
            try:
                stream_predict(runner, path, target, mean=info.mean, std=info.std, image_mode=info.image_mode,
                               tile=options.tile or 1024, context=options.overlap // 2, device=device)
            except PixelsegError as err:
                failed(str(err))
                continue
            report.written.append(target)
            continue
        try:
            image = read_image(path, info.image_mode)
            pixels = normalize(to_chw_uint8(image).float() / 255.0, info.mean, info.std)
            with torch.inference_mode():
                logits = run(pixels[None].to(device))
                labels = crf_labels(logits[0], image, crf) if refine == "crf" else logits.argmax(1)[0].cpu().numpy()
        except PixelsegError as err:
            failed(str(err))
            continue
        except (RuntimeError, ValueError) as err:  # e.g. an image smaller than the network accepts
            failed(f"{path}: inference failed ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})")
            continue
        index_path, overlay_path = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.png"
        atomic_write_bytes(index_path, _png_bytes(index_png(labels, info.palette)))
        atomic_write_bytes(overlay_path, _png_bytes(overlay(image, labels, info.palette)))
        report.written += [index_path, overlay_path]
    return report


def _predict_volumes(model: torch.nn.Module, model_dir: Path, info, inputs, out_dir, device: str,
                     options: InferenceOptions, refine: str | None, shard: tuple[int, int],
                     on_error: Callable[[str], None] | None) -> PredictReport:
    from .volumes import predict_volumes

    unsupported = {"--refine": refine is not None,
                   "--optimize/--compile": options.optimize or options.compile, "--tile": options.tile is not None,
                   "--tta-scales/--tta-flip": options.tta_scales is not None or options.tta_flip,
                   "--stream": options.stream}
    named = [flag for flag, given in unsupported.items() if given]
    if named:
        raise PixelsegError(f"{', '.join(named)}: not available for volumetric (3D) models; they segment whole volumes")
    if options.threads:
        torch.set_num_threads(options.threads)
    runner = onnx_runner(model, model_dir, options.threads) if options.backend == "onnxruntime" else None
    written, failed = predict_volumes(model, info, inputs, out_dir, device=device, shard=shard, on_error=on_error,
                                      runner=runner)
    return PredictReport(written=written, failed=failed)


def total_failures(local_failures: int) -> int:
    """Under torchrun: the failures of all processes (a gloo all-reduce, which also waits for every
    process to finish its share before any exits). Alone: ``local_failures``."""
    _, world = shard_from_env()
    if world == 1:
        return local_failures
    import torch.distributed as dist

    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("gloo")
    count = torch.tensor([local_failures])
    dist.all_reduce(count)
    if initialised_here:
        dist.destroy_process_group()
    return int(count.item())
