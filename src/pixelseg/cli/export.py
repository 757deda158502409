"""``pixelseg export RUN_OR_MODEL --out model.onnx [--precision fp32|bf16|int8]``: ONNX with dynamic sizes,
checked against PyTorch; reduced precisions gated on the model's validation mIoU; JSON metadata next to it."""

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
                   help="ONNX opset (default: pixelseg.inference.export.OPSET)")] = None,
               precision: Annotated[str, typer.Option(
                   help="'fp32'; 'int8' (static quantization; ONNX Runtime, and OpenVINO when installed) or "
                        "'bf16' (eager autocast, and OpenVINO), each refused if the validation mIoU drops more "
                        "than 1 / 0.5 point")] = "fp32",
               calibration: Annotated[int, typer.Option(
                   help="--precision int8: training images to calibrate the activation ranges on")] = 16,
               accept_drop: Annotated[bool, typer.Option(
                   help="write a reduced precision even when its mIoU drop exceeds the gate")] = False) -> None:
        """Export a saved model (dynamic batch, height, width), checked against PyTorch with ONNX Runtime; the
        JSON metadata next to it (<out>.json) records the checks and each runtime's measured CPU time."""
        from ..inference.export import metadata_path
        from ..inference.quantize import export_with_precision

        report = export_with_precision(model, out_file, precision=precision, format=format_, opset=opset,
                                       calibration=calibration, accept_drop=accept_drop)
        diffs = ", ".join(f"{size}: {diff:.1e}" for size, diff in report.max_abs_diff.items())
        exporter = "torch.export" if report.exporter == "dynamo" else "TorchScript exporter"
        out.print(f"wrote {report.path} ({report.precision}, ONNX opset {report.opset}, {exporter}; "
                  f"max |ONNX Runtime fp32 - PyTorch| {diffs})")
        for note in report.notes:
            out.print(f"  {note}", highlight=False)
        out.print(f"  metadata: {metadata_path(report.path)}", highlight=False)
