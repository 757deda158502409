"""``pixelseg train CONFIG.yaml``: every task (semantic, volumetric, instance) through the one trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import SetOption, friendly, is_main_process, out


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def train(config: Annotated[Path, typer.Argument(help="YAML experiment config")],
              set_: SetOption = None,
              resume: Annotated[bool, typer.Option(help="continue from OUT_DIR/last.safetensors")] = False,
              quiet: bool = False) -> None:
        """Train a model from a YAML config (any task: the config's `task`, or its dataset's)."""
        from ..engine.config import load_config
        from ..engine.train import train as run_training

        run_dir = run_training(load_config(config, list(set_ or []), require_data=True), resume=resume, quiet=quiet)
        if is_main_process():
            out.print(f"run directory: {run_dir}  (best model: {run_dir / 'best'}, log: {run_dir / 'log.csv'})")
