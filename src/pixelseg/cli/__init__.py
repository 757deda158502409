"""The ``pixelseg`` command line: train, evaluate, predict, models, demo (+ plugin commands).

Bad input ends in one line on stderr naming the file and the problem, and exit code 2 — no traceback.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ..errors import PixelsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pixelseg: image segmentation on PyTorch.")
out = Console()
err = Console(stderr=True)

# Modules that add their own commands: each defines ``register(app: typer.Typer) -> None``.
CLI_PLUGINS: list[str] = ["pixelseg.cli.segment", "pixelseg.cli.instance", "pixelseg.data.stats"]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def friendly(command: F) -> F:
    """Turn ``PixelsegError`` into one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PixelsegError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted (checkpoints written so far are intact; continue with --resume)")

    return wrapper  # type: ignore[return-value]


SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")]


@app.command()
@friendly
def train(config: Annotated[Path, typer.Argument(help="YAML experiment config")],
          set_: SetOption = None,
          resume: Annotated[bool, typer.Option(help="continue from OUT_DIR/last.safetensors")] = False,
          quiet: bool = False) -> None:
    """Train a model from a YAML config."""
    from ..engine.config import apply_overrides, read_yaml

    values = apply_overrides(read_yaml(config), list(set_ or []))
    if values.get("task") == "instance":
        from ..instance.train import train_from_config

        train_from_config(config, list(set_ or []), resume)
        return
    from ..engine.config import load_config
    from ..engine.train import train as run_training

    run_dir = run_training(load_config(config, list(set_ or [])), resume=resume, quiet=quiet)
    out.print(f"run directory: {run_dir}  (best model: {run_dir / 'best'}, log: {run_dir / 'log.csv'})")


def _print_scores(scores: dict[str, Any]) -> None:
    table = Table(title=f"{scores['model']} on {scores['split']} ({scores['images']} images)")
    for column in ("class", "IoU", "Dice", "accuracy"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for name, iou, dice, acc in zip(scores["classes"], scores["iou_per_class"], scores["dice_per_class"],
                                    scores["accuracy_per_class"], strict=True):
        table.add_row(name, f"{iou:.4f}", f"{dice:.4f}", f"{acc:.4f}")
    out.print(table)
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "frequency_weighted_iou", "mean_dice"):
        out.print(f"{key:>24}: {scores[key]:.4f}")


@app.command()
@friendly
def evaluate(model: Annotated[Path, typer.Argument(help="model directory or run directory")],
             split: Annotated[str | None, typer.Option(help="dataset split (default: validation)")] = None,
             data_root: Annotated[str | None, typer.Option(help="dataset root, if it moved")] = None,
             out_json: Annotated[Path | None, typer.Option("--out", help="write the scores as JSON")] = None,
             tta_scales: Annotated[str | None, typer.Option(
                 help="test-time scales whose logits are averaged, e.g. '0.75,1,1.25' or '0.75 1 1.25'")] = None,
             tta_flip: Annotated[bool, typer.Option(help="also average the left-right flipped image")] = False,
             device: str = "cpu") -> None:
    """Score a saved model on its dataset (PA, MPA, IoU/mIoU, fwIoU, Dice), optionally with TTA."""
    from ..models.mask_rcnn import find_instance_model

    instance_dir = find_instance_model(model)
    if instance_dir is not None:  # a Mask R-CNN: COCO box and mask AP instead of pixel scores
        from ..instance.evaluate import evaluate_from_args

        evaluate_from_args(instance_dir, split=split, output=out_json, data_root=data_root, device=device)
        return
    from ..engine.evaluate import evaluate as run_evaluation
    from ..engine.evaluate import write_report
    from ..inference.tta import parse_scales

    overrides = {"root": data_root} if data_root else None
    scales = parse_scales(tta_scales) if tta_scales is not None else None
    scores = run_evaluation(model, split=split, data_overrides=overrides, device=device, tta_scales=scales,
                            tta_flip=tta_flip)
    _print_scores(scores)
    if out_json is not None:
        write_report(scores, out_json)
        out.print(f"scores written to {out_json}")


@app.command()
@friendly
def predict(inputs: Annotated[Path, typer.Argument(help="an image or a folder of images")],
            model: Annotated[Path, typer.Option(help="model directory or run directory")],
            out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
            refine: Annotated[str | None, typer.Option(help="'crf': dense-CRF post-processing")] = None,
            crf_iterations: Annotated[int | None, typer.Option(help="--refine crf: mean-field steps [5]")] = None,
            crf_gaussian_sxy: Annotated[float | None, typer.Option(help="smoothness kernel width, px [3]")] = None,
            crf_gaussian_compat: Annotated[float | None, typer.Option(help="smoothness kernel weight [3]")] = None,
            crf_bilateral_sxy: Annotated[float | None, typer.Option(help="appearance kernel width, px [80]")] = None,
            crf_bilateral_srgb: Annotated[float | None, typer.Option(help="appearance colour width [13]")] = None,
            crf_bilateral_compat: Annotated[float | None, typer.Option(help="appearance kernel weight [10]")] = None,
            backend: Annotated[str, typer.Option(help="'torch' (eager) or 'onnxruntime'")] = "torch",
            optimize: Annotated[bool, typer.Option(help="fold batch norms, channels_last (same outputs)")] = False,
            compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the eager model")] = False,
            threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
            tile: Annotated[int | None, typer.Option(help="tile side: overlap-tile / sliding window")] = None,
            overlap: Annotated[int, typer.Option(help="sliding-window overlap in pixels")] = 64,
            tile_batch: Annotated[int, typer.Option(help="tiles per forward pass")] = 1,
            blend: Annotated[str, typer.Option(help="'gaussian', 'cosine' or 'exact'")] = "gaussian",
            tta_scales: Annotated[str | None, typer.Option(help="test-time scales, e.g. '0.75,1,1.25'")] = None,
            tta_flip: Annotated[bool, typer.Option(help="also average the left-right flip")] = False,
            stream: Annotated[bool, typer.Option(help="read window by window, write <stem>.tif (tiled)")] = False,
            device: str = "cpu") -> None:
    """Write an index PNG and a colour overlay for every input image (under torchrun: this rank's share)."""
    from ..models.mask_rcnn import find_instance_model

    instance_dir = find_instance_model(model)
    if instance_dir is not None:  # a Mask R-CNN: per-instance COCO JSON (RLE) and overlays
        from ..instance.predict import predict_from_args

        predict_from_args(instance_dir, inputs, out_dir, device=device)
        return
    from ..refiners.dense_crf import DenseCRFConfig
    from ..engine.predict import InferenceOptions, shard_from_env, total_failures
    from ..engine.predict import predict as run_prediction
    from ..inference.tta import parse_scales

    options = InferenceOptions(backend=backend, optimize=optimize, compile=compile_, threads=threads, tile=tile,
                               overlap=overlap, tile_batch=tile_batch, blend=blend, stream=stream,
                               tta_scales=parse_scales(tta_scales) if tta_scales is not None else None,
                               tta_flip=tta_flip)
    crf = DenseCRFConfig.with_overrides(
        iterations=crf_iterations, gaussian_sxy=crf_gaussian_sxy, gaussian_compat=crf_gaussian_compat,
        bilateral_sxy=crf_bilateral_sxy, bilateral_srgb=crf_bilateral_srgb, bilateral_compat=crf_bilateral_compat)
    rank, world = shard_from_env()
    who = f"rank {rank}: " if world > 1 else ""
    report = run_prediction(model, inputs, out_dir, device=device, refine=refine, options=options, crf=crf,
                            shard=(rank, world), on_error=lambda m: err.print(f"error: {who}{m}", highlight=False,
                                                                             soft_wrap=True))
    images = len(report.written) if stream else len(report.written) // 2
    out.print(f"{who}{images} images segmented into {out_dir}")
    failures = total_failures(len(report.failed))
    if failures:
        fail(f"{failures} input(s) failed (see above); the others were written")


@app.command()
@friendly
def export(model: Annotated[Path, typer.Argument(help="model directory or run directory")],
           out_file: Annotated[Path, typer.Option("--out", help="the file to write, e.g. model.onnx")],
           format_: Annotated[str, typer.Option("--format", help="'onnx'")] = "onnx",
           opset: Annotated[int | None, typer.Option(help="ONNX opset (default: pixelseg.inference.export.OPSET)")]
           = None) -> None:
    """Export a saved model (dynamic batch, height, width), checked against PyTorch with ONNX Runtime."""
    from ..inference.export import OPSET, export_model_dir

    report = export_model_dir(model, out_file, format=format_, opset=opset or OPSET)
    diffs = ", ".join(f"{size}: {diff:.1e}" for size, diff in report.max_abs_diff.items())
    out.print(f"wrote {report.path} (ONNX opset {report.opset}; max |ONNX Runtime - PyTorch| {diffs})")


@app.command()
@friendly
def models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered models: name, parameters (21 classes, RGB), paper."""
    import torch

    from ..models.registry import create_model, list_models, model_entry

    rows = []
    for name in list_models():
        try:
            with torch.device("meta"):
                count = sum(p.numel() for p in create_model(name, num_classes=21).parameters())
            shown = f"{count / 1e6:.2f}M"
        except Exception as error:  # a model that needs other arguments still gets listed
            shown = f"n/a ({type(error).__name__})"
        rows.append((name, shown, model_entry(name).paper))
    if as_json:
        out.print_json(json.dumps([dict(zip(("name", "parameters", "paper"), r, strict=True)) for r in rows]))
        return
    table = Table(title="pixelseg models")
    for column in ("name", "parameters", "paper"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command()
@friendly
def demo(out_dir: Annotated[Path, typer.Option("--out")] = Path("runs/demo"),
         epochs: int = 24, samples: int = 384) -> None:
    """Train a small U-Net on the built-in Shapes set, evaluate it, write overlays."""
    from ..engine.demo import run_demo

    run_demo(out_dir, epochs=epochs, samples=samples, console=out)


def _load_plugins() -> None:
    for module in CLI_PLUGINS:
        importlib.import_module(module).register(app)


_load_plugins()


def main() -> None:
    app(prog_name="pixelseg")


if __name__ == "__main__":
    sys.exit(main())
