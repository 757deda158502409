"""``pixelseg models``: every registered model with its parameter count and paper."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .base import friendly, out


def register(app: typer.Typer) -> None:
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
