"""``pixelseg evaluate RUN_OR_MODEL``: the task's scores on a split of the model's dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .base import SetOption, friendly, is_main_process, out


def print_scores(scores: dict[str, Any]) -> None:
    """Per-class table and means for pixel scores; one line per figure for the others (e.g. COCO AP)."""
    runtime = "" if scores.get("precision", "fp32") == "fp32" and scores.get("backend", "torch") == "torch" else \
        f"; {scores['precision']} on {scores['backend']}"
    title = f"{scores['model']} on {scores['split']} ({scores['images']} images{runtime})"
    if "iou_per_class" in scores:
        table = Table(title=title)
        for column in ("class", "IoU", "Dice", "accuracy"):
            table.add_column(column, justify="right" if column != "class" else "left")
        for name, iou, dice, acc in zip(scores["classes"], scores["iou_per_class"], scores["dice_per_class"],
                                        scores["accuracy_per_class"], strict=True):
            table.add_row(name, f"{iou:.4f}", f"{dice:.4f}", f"{acc:.4f}")
        out.print(table)
        for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "frequency_weighted_iou", "mean_dice"):
            out.print(f"{key:>24}: {scores[key]:.4f}")
        for key in ("pixel_error", "pixel_error_best", "pixel_error_fscore", "rand_error", "rand_error_best",
                    "warping_error"):  # ISBI 2012's errors
            if key in scores:
                out.print(f"{key:>24}: {scores[key]:.6f}")
        return
    out.print(title)
    skip = {"model", "task", "split", "images", "classes", "tta", "report", "report_error", "precision", "backend"}
    for key, value in scores.items():
        if key not in skip and isinstance(value, float):
            out.print(f"{key:>24}: {value:.4f}")


def data_overrides(texts: list[str]) -> dict[str, Any]:
    """``--set data.val_samples=300`` → ``{"val_samples": 300}``: keys of the saved data config only."""
    from ..errors import PixelsegError
    from ..io.config import parse_override

    overrides: dict[str, Any] = {}
    for text in texts:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "data":
            raise PixelsegError(f"--set {text}: evaluate overrides keys of the saved data config (data.KEY=VALUE)")
        overrides[path[1]] = value
    return overrides


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def evaluate(model: Annotated[Path, typer.Argument(help="model directory or run directory")],
                 split: Annotated[str | None, typer.Option(help="dataset split (default: validation)")] = None,
                 data_root: Annotated[str | None, typer.Option(help="dataset root, if it moved")] = None,
                 set_: SetOption = None,
                 out_json: Annotated[Path | None, typer.Option("--out", help="write the scores as JSON")] = None,
                 tta_scales: Annotated[str | None, typer.Option(
                     help="test-time scales whose logits are averaged, e.g. '0.75,1,1.25' or '0.75 1 1.25'")] = None,
                 tta_flip: Annotated[bool, typer.Option(help="also average the left-right flipped image")] = False,
                 tta_rotate: Annotated[bool, typer.Option(
                     help="also average the image turned by 90, 180 and 270 degrees (with --tta-flip: all 8 "
                     "symmetries of the square, U-Net's ISBI evaluation)")] = False,
                 report: Annotated[Path | None, typer.Option(
                     "--report", help="write report/index.html and report.md here (default: the run folder's "
                     "report/)")] = None,
                 no_report: Annotated[bool, typer.Option("--no-report", help="write no report")] = False,
                 refine: Annotated[str | None, typer.Option(
                     help="'crf': the dense CRF after the model (DeepLab's CRF rows)")] = None,
                 precision: Annotated[str, typer.Option(
                     help="fp32, bf16 or int8: score what `pixelseg predict --precision` runs")] = "fp32",
                 backend: Annotated[str | None, typer.Option(
                     help="torch, onnxruntime, openvino or auto (default: torch; auto for int8)")] = None,
                 device: str = "cpu") -> None:
        """Score a saved model on its dataset: PA, MPA, IoU/mIoU, fwIoU, Dice (semantic, volumetric) or COCO
        box and mask AP (instance); optionally with TTA. Writes an HTML and Markdown report (per-class table,
        confusion heatmap, best and worst images, training curves) unless --no-report."""
        from ..engine.evaluate import evaluate as run_evaluation
        from ..engine.evaluate import write_report
        from ..inference.tta import parse_scales

        overrides = data_overrides(list(set_ or []))
        if data_root:
            overrides["root"] = data_root
        scales = parse_scales(tta_scales) if tta_scales is not None else None
        if no_report and report is not None:
            from ..errors import PixelsegError

            raise PixelsegError("--report DIR and --no-report contradict each other: give one")
        scores = run_evaluation(model, split=split, data_overrides=overrides, device=device, tta_scales=scales,
                                tta_flip=tta_flip, tta_rotate=tta_rotate, report=False if no_report else report or True,
                                refine=refine, precision=precision, backend=backend)
        if not is_main_process():  # under torchrun every process holds the same scores: rank 0 reports them
            return
        print_scores(scores)
        if "report_error" in scores:
            out.print(f"report not written: {scores['report_error']}")
        if out_json is not None:
            write_report(scores, out_json)
            out.print(f"scores written to {out_json}")
        if "report" in scores:
            out.print(f"report: {scores['report']} (and report.md beside it)")
