"""``pixelseg predict INPUT --model RUN_OR_MODEL --out DIR``: every task's prediction files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import err, fail, friendly, out


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def predict(inputs: Annotated[Path, typer.Argument(help="an image (volume) or a folder of them")],
                model: Annotated[Path, typer.Option(help="model directory or run directory")],
                out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
                refine: Annotated[str | None, typer.Option(help="'crf': dense-CRF post-processing")] = None,
                crf_iterations: Annotated[int | None, typer.Option(help="--refine crf: mean-field steps [5]")] = None,
                crf_gaussian_sxy: Annotated[float | None, typer.Option(help="smoothness kernel width, px [3]")] = None,
                crf_gaussian_compat: Annotated[float | None, typer.Option(help="smoothness kernel weight [3]")] = None,
                crf_bilateral_sxy: Annotated[float | None, typer.Option(help="appearance kernel width, px [80]")] = None,
                crf_bilateral_srgb: Annotated[float | None, typer.Option(help="appearance colour width [13]")] = None,
                crf_bilateral_compat: Annotated[float | None, typer.Option(
                    help="appearance kernel weight [10]")] = None,
                backend: Annotated[str | None, typer.Option(
                    help="'torch' (eager; the default for fp32 and bf16), 'onnxruntime' or 'openvino' (the graph "
                         "of pixelseg export), 'auto' (the faster of them; the default for int8)")] = None,
                optimize: Annotated[bool, typer.Option(help="fold batch norms, channels_last (same outputs)")] = False,
                compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the eager model")] = False,
                precision: Annotated[str, typer.Option(
                    help="'fp32', 'bf16' (eager autocast, or OpenVINO) or 'int8' (model.int8.onnx of "
                         "pixelseg export, else a fresh quantization)")] = "fp32",
                threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
                tile: Annotated[int | None, typer.Option(help="tile side: overlap-tile / sliding window")] = None,
                overlap: Annotated[int | None, typer.Option(
                    help="sliding-window overlap in pixels, below --tile [64, at most half the tile]")] = None,
                tile_batch: Annotated[int, typer.Option(help="tiles per forward pass")] = 1,
                blend: Annotated[str, typer.Option(help="'gaussian', 'cosine' or 'exact'")] = "gaussian",
                tta_scales: Annotated[str | None, typer.Option(help="test-time scales, e.g. '0.75,1,1.25'")] = None,
                tta_flip: Annotated[bool, typer.Option(help="also average the left-right flip")] = False,
                tta_rotate: Annotated[bool, typer.Option(
                    help="also average the quarter turns (with --tta-flip: the 8 symmetries of the square)")] = False,
                stream: Annotated[bool, typer.Option(help="read window by window, write <stem>.tif (tiled)")] = False,
                score_threshold: Annotated[float, typer.Option(
                    help="instance models: keep detections scoring at least this")] = 0.5,
                device: str = "cpu") -> None:
        """Semantic: an index PNG and a colour overlay per image; volumetric: label volumes; instance:
        overlays and COCO JSON. Under torchrun: this rank's share of the inputs."""
        from ..engine.predict import InferenceOptions, shard_from_env, total_failures
        from ..engine.predict import predict as run_prediction
        from ..inference.tta import parse_scales
        from ..refiners.dense_crf import DenseCRFConfig

        if threads is not None and threads < 1:
            fail(f"--threads must be at least 1, got {threads}")
        if tile is not None and tile < 1:
            fail(f"--tile must be at least 1 pixel, got {tile}")
        if overlap is not None and tile is not None and not 0 <= overlap < tile:
            fail(f"--overlap must lie in [0, --tile) = [0, {tile}), got {overlap}")
        if overlap is not None and overlap < 0:
            fail(f"--overlap must be at least 0, got {overlap}")
        if overlap is None:
            overlap = min(64, tile // 2) if tile is not None else 64
        if tile_batch < 1:
            fail(f"--tile-batch must be at least 1, got {tile_batch}")
        if backend is None:  # int8 is always a graph: the faster runtime
            backend = "auto" if precision == "int8" else "torch"
        options = InferenceOptions(backend=backend, optimize=optimize, compile=compile_, threads=threads, tile=tile,
                                   overlap=overlap, tile_batch=tile_batch, blend=blend, stream=stream,
                                   tta_scales=parse_scales(tta_scales) if tta_scales is not None else None,
                                   tta_flip=tta_flip, tta_rotate=tta_rotate, precision=precision)
        crf = DenseCRFConfig.with_overrides(
            iterations=crf_iterations, gaussian_sxy=crf_gaussian_sxy, gaussian_compat=crf_gaussian_compat,
            bilateral_sxy=crf_bilateral_sxy, bilateral_srgb=crf_bilateral_srgb,
            bilateral_compat=crf_bilateral_compat)
        rank, world = shard_from_env()
        who = f"rank {rank}: " if world > 1 else ""
        report = run_prediction(model, inputs, out_dir, device=device, refine=refine, options=options, crf=crf,
                                shard=(rank, world), score_threshold=score_threshold,
                                on_error=lambda m: err.print(f"error: {who}{m}", highlight=False, soft_wrap=True))
        for line in report.lines:
            out.print(f"{who}{line}", highlight=False)
        out.print(f"{who}{report.predicted} {report.what} segmented into {out_dir}")
        failures = total_failures(len(report.failed))
        if failures:
            fail(f"{failures} input(s) failed (see above); the others were written")
