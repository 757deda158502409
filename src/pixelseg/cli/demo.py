"""``pixelseg demo`` (``make demo``): classical methods at once, then a small U-Net on the built-in Shapes
set, trained, scored (with the HTML report) and applied."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import friendly, out


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def demo(out_dir: Annotated[Path, typer.Option("--out")] = Path("runs/demo"),
             epochs: int = 24, samples: int = 384) -> None:
        """Show k-means and the dense CRF at once, then train a small U-Net on the built-in Shapes set,
        evaluate it (HTML report) and write result.png: image | ground truth | prediction."""
        from ..engine.demo import run_demo

        run_demo(out_dir, epochs=epochs, samples=samples, console=out)
