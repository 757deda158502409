"""``pixelseg show CONFIG_OR_DATASET``: a grid of samples with their masks and a legend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import SetOption, friendly, out


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def show(source: Annotated[str, typer.Argument(
                 help="a config YAML, or a dataset name (e.g. shapes; --set data.root=... for its folder)")],
             out_path: Annotated[Path, typer.Option("--out", help="the PNG to write")] = Path("grid.png"),
             split: Annotated[str | None, typer.Option(help="dataset split (default: the training split)")] = None,
             count: Annotated[int, typer.Option(min=1, max=64, help="how many samples")] = 8,
             augmented: Annotated[bool, typer.Option(
                 help="after the config's training augmentations: what the model is fed")] = False,
             set_: SetOption = None) -> None:
        """Show samples of a dataset with their masks and a legend of the class names and colours."""
        from ..engine.config import load_config
        from ..engine.report import sample_grid
        from ..io.checkpoint import atomic_write_bytes
        from ..io.render import png_bytes

        overrides = list(set_ or [])
        if Path(source).suffix.lower() in (".yaml", ".yml") or Path(source).is_file():
            config = load_config(source, overrides)
        else:
            config = load_config(None, [f"data.name={source}", *overrides])
        picture = sample_grid(config.data, split=split, count=count, augmented=augmented)
        atomic_write_bytes(out_path, png_bytes(picture))
        out.print(f"samples of {config.data.name} ({split or config.data.train_split}) written to {out_path}")
