"""``pixelseg stats CONFIG_OR_DATASET``: class frequencies and the class weights of weighted cross-entropy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .base import friendly


def data_config_of(source: str, root: str | None, overrides: list[str]) -> Any:
    """A ``DataConfig`` from a YAML experiment config (its ``data:`` section) or a dataset name."""
    from ..engine.config import load_config

    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        config = load_config(path, overrides).data
    else:
        config = load_config(None, [f"data.name={source}", *overrides]).data
    if root is not None:
        config.root = root
    return config


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def stats(source: Annotated[str, typer.Argument(help="a YAML experiment config or a dataset name "
                                                         "(shapes, camvid, isbi2012)")],
              root: Annotated[str | None, typer.Option(help="dataset root (camvid, isbi2012)")] = None,
              split: Annotated[str | None, typer.Option(help="split to count (default: training)")] = None,
              limit: Annotated[int | None, typer.Option(help="count only the first N images")] = None,
              set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key")] = None,
              as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
        """Class frequencies and the median-frequency and ENet class weights of a dataset."""
        from ..data.build import dataset_stats
        from ..data.stats import format_table

        counted = dataset_stats(data_config_of(source, root, list(set_ or [])), split, limit)
        if as_json:
            print(json.dumps({
                "images": counted.images, "classes": counted.classes,
                "pixels": counted.pixels.tolist(), "frequency": counted.frequency.tolist(),
                "median_frequency": counted.median_frequency_weights().tolist(),
                "enet": counted.enet_weights().tolist()}))
        else:
            print(format_table(counted))
