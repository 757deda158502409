"""``pixelseg demo`` (``make demo``): a small U-Net on the built-in Shapes set, trained, scored, applied."""

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
        """Train a small U-Net on the built-in Shapes set, evaluate it, write overlays."""
        from ..engine.demo import run_demo

        run_demo(out_dir, epochs=epochs, samples=samples, console=out)
