"""``pixelseg export RUN_OR_MODEL --out model.onnx``: ONNX with dynamic sizes, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import friendly, out


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def export(model: Annotated[Path, typer.Argument(help="model directory or run directory")],
               out_file: Annotated[Path, typer.Option("--out", help="the file to write, e.g. model.onnx")],
               format_: Annotated[str, typer.Option("--format", help="'onnx'")] = "onnx",
               opset: Annotated[int | None, typer.Option(
                   help="ONNX opset (default: pixelseg.inference.export.OPSET)")] = None) -> None:
        """Export a saved model (dynamic batch, height, width), checked against PyTorch with ONNX Runtime."""
        from ..inference.export import OPSET, export_model_dir

        report = export_model_dir(model, out_file, format=format_, opset=opset or OPSET)
        diffs = ", ".join(f"{size}: {diff:.1e}" for size, diff in report.max_abs_diff.items())
        out.print(f"wrote {report.path} (ONNX opset {report.opset}; max |ONNX Runtime - PyTorch| {diffs})")
