"""``pixelseg data download NAME --root DIR`` and ``pixelseg data check NAME --root DIR``: fetch a benchmark
dataset from its official source (resumable, checksummed, extracted) and validate a local copy."""

from __future__ import annotations

from typing import Annotated

import typer

from .base import err, friendly

data_app = typer.Typer(no_args_is_help=True, help="Download a benchmark dataset or check a local copy.")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command()
@friendly
def download(name: Annotated[str, typer.Argument(help="dataset: voc, voc_aug, ade20k, coco_stuff, medical, ...")],
             root: Annotated[str, typer.Option(help="folder to download and extract into")],
             timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 60.0) -> None:
    """Download NAME into --root (resuming a .part file), check its published checksum and extract it."""
    from ..data.download import download_dataset

    shown: dict[str, int] = {}

    def progress(filename: str, done: int, total: int | None) -> None:
        step = done >> 26  # a line every 64 MiB
        if shown.get(filename) != step:
            shown[filename] = step
            size = f" of {total / 2**20:,.0f}" if total else ""
            err.print(f"{filename}: {done / 2**20:,.0f}{size} MiB", highlight=False)

    for path in download_dataset(name, root, timeout=timeout, progress=progress):
        print(f"{path}: ok")


@data_app.command()
@friendly
def check(name: Annotated[str, typer.Argument(help="dataset: voc, voc_aug, cityscapes, ade20k, coco_stuff, "
                                                    "drive, weizmann_horse, medical, promise12")],
          root: Annotated[str, typer.Option(help="the dataset's root folder")],
          classes: Annotated[list[str] | None, typer.Option("--class", help="medical: a class name, "
                                                                             "background first (repeat)")] = None
          ) -> None:
    """Validate a local copy: one line per problem (missing files, unpaired images, unknown label values)
    and exit code 2 if there is any."""
    from ..data.build import check_dataset

    problems = check_dataset(name, root, classes=list(classes) if classes else None)
    for line in problems:
        print(line)
    if problems:
        err.print(f"{name}: {len(problems)} problem(s) under {root}", highlight=False)
        raise typer.Exit(code=2)
    print(f"{name}: no problems under {root}")
