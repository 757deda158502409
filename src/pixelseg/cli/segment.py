"""``pixelseg segment`` and ``pixelseg kmeans``: classical segmentation from the command line.

A plugin of ``pixelseg.cli`` (listed in its ``CLI_PLUGINS``): :func:`register` adds the commands.
For every input image and every K it writes ``<name>_<method>[_k<K>]_labels.png`` (the segment index
of each pixel, 16-bit) and ``<name>_<method>[_k<K>]_overlay.png`` (segment boundaries drawn on the
image). Bad input ends in one line naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..errors import PixelsegError, closest
from ..io.images import read_rgb

METHODS = ("kmeans", "slic", "dpgmm", "meanshift", "graphcut", "grabcut")


def read_scribbles(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Scribbles as 0 unknown / 1 foreground / 2 background: an index PNG with those values, or an RGB
    image where pure red marks the foreground and pure blue the background."""
    from PIL import Image

    from ..classical.graphcut import BACKGROUND, FOREGROUND

    if not path.is_file():
        raise PixelsegError("no such scribble file", path)
    with Image.open(path) as image:
        pixels = np.array(image)
    if pixels.shape[:2] != shape:
        raise PixelsegError(f"scribbles are {pixels.shape[1]}x{pixels.shape[0]} but the image is "
                            f"{shape[1]}x{shape[0]}", path)
    if pixels.ndim == 3:
        colours = pixels[..., :3].astype(int)
        seeds = np.zeros(shape, dtype=np.uint8)
        seeds[(colours[..., 0] > 200) & (colours[..., 1] < 60) & (colours[..., 2] < 60)] = FOREGROUND
        seeds[(colours[..., 2] > 200) & (colours[..., 0] < 60) & (colours[..., 1] < 60)] = BACKGROUND
        return seeds
    if not np.isin(pixels, [0, 1, 2]).all():
        raise PixelsegError("an index scribble map may only hold 0 (unknown), 1 (foreground), "
                            "2 (background)", path)
    return pixels.astype(np.uint8)


def parse_box(text: str) -> tuple[int, int, int, int]:
    parts = text.replace(",", " ").split()
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise PixelsegError(f"--box must be four integers x0,y0,x1,y1, got {text!r}")
    x0, y0, x1, y1 = (int(p) for p in parts)
    return x0, y0, x1, y1


def segment_image(image: np.ndarray, method: str, k: int | None, options: dict[str, Any]) -> np.ndarray:
    """The label map of one image by one method."""
    if method == "kmeans":
        from ..classical.kmeans import kmeans_segments

        return kmeans_segments(image, k or 100, spatial_weight=options["spatial_weight"],
                               merge_threshold=options["merge_threshold"], min_size=options["min_size"])
    if method == "slic":
        from ..classical.kmeans import slic_segments

        return slic_segments(image, k or 100)
    if method == "dpgmm":
        from ..classical.clustering import dpgmm_segments

        return dpgmm_segments(image, max_components=k or 20, spatial_weight=options["spatial_weight"])
    if method == "meanshift":
        from ..classical.clustering import mean_shift_segments

        return mean_shift_segments(image, spatial_weight=options["spatial_weight"])
    from ..classical.graphcut import boykov_jolly, grabcut

    seeds, box = options.get("seeds"), options.get("box")
    if method == "graphcut":
        if seeds is None:
            raise PixelsegError("--method graphcut needs --scribbles FILE")
        return boykov_jolly(image, seeds).astype(np.int64)
    if seeds is None and box is None:
        raise PixelsegError("--method grabcut needs --box x0,y0,x1,y1 or --scribbles FILE")
    return grabcut(image, box=box, seeds=seeds).astype(np.int64)


def write_outputs(image: np.ndarray, labels: np.ndarray, stem: Path) -> list[Path]:
    from PIL import Image
    from skimage.segmentation import mark_boundaries

    stem.parent.mkdir(parents=True, exist_ok=True)
    label_path = stem.with_name(stem.name + "_labels.png")
    overlay_path = stem.with_name(stem.name + "_overlay.png")
    Image.fromarray(labels.astype(np.uint16)).save(label_path)
    overlay = mark_boundaries(image, labels, color=(1.0, 1.0, 0.0))
    Image.fromarray((overlay * 255).round().astype(np.uint8)).save(overlay_path)
    return [label_path, overlay_path]


def run_segment(images: list[Path], method: str, out_dir: Path, ks: list[int], options: dict[str, Any]
                ) -> list[Path]:
    """Segment every image with every K (methods without K run once); returns the files written."""
    if method not in METHODS:
        raise PixelsegError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
                            + closest(method, METHODS))
    for k in ks:
        if k < 1:
            raise PixelsegError(f"K must be at least 1, got {k}")
    if not images:
        raise PixelsegError("no input images given")
    sweep: list[int | None] = list(ks) if ks and method in ("kmeans", "slic", "dpgmm") else [None]
    written: list[Path] = []
    for path in images:
        image = read_rgb(path)
        per_image = dict(options)
        if options.get("scribbles") is not None:
            per_image["seeds"] = read_scribbles(options["scribbles"], image.shape[:2])
        for k in sweep:
            labels = segment_image(image, method, k, per_image)
            suffix = f"_{method}" + (f"_k{k}" if k is not None else "")
            written += write_outputs(image, labels, out_dir / f"{path.stem}{suffix}")
    return written


def split_sweep(images: list[Path], ks: list[int]) -> tuple[list[Path], list[int]]:
    """``--k 50 100 200`` parses as ``--k 50`` plus positional 100 and 200: move the numbers that are
    not files back to the K list."""
    files, extra = [], []
    for item in images:
        if str(item).isdigit() and not item.exists():
            extra.append(int(str(item)))
        else:
            files.append(item)
    return files, list(ks) + extra


def register(app: typer.Typer) -> None:
    """Add ``segment`` and ``kmeans`` to the ``pixelseg`` command."""
    from .base import friendly  # PixelsegError -> one line on stderr, exit code 2

    @app.command()
    @friendly
    def segment(images: Annotated[list[Path], typer.Argument(help="input images")],
                method: Annotated[str, typer.Option(help="|".join(METHODS))] = "kmeans",
                out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("segments"),
                k: Annotated[list[int] | None, typer.Option("--k", help="number of segments; several "
                                                            "values give a sweep")] = None,
                spatial_weight: float = 1.0, merge_threshold: float = 0.0, min_size: int = 0,
                scribbles: Annotated[Path | None, typer.Option(help="PNG: 1/red foreground, 2/blue "
                                                               "background")] = None,
                box: Annotated[str | None, typer.Option(help="x0,y0,x1,y1 for grabcut")] = None) -> None:
        """Classical segmentation: k-means (XYRGB), SLIC, DP-GMM, mean shift, graph cut, GrabCut."""
        files, ks = split_sweep(images, list(k or []))
        options = {"spatial_weight": spatial_weight, "merge_threshold": merge_threshold,
                   "min_size": min_size, "scribbles": scribbles,
                   "box": parse_box(box) if box is not None else None}
        written = run_segment(files, method, out_dir, ks, options)
        print(f"{len(written) // 2} segmentations written to {out_dir}")

    @app.command("kmeans")
    @friendly
    def kmeans_command(images: Annotated[list[Path], typer.Argument(help="input images")],
                       k: Annotated[list[int], typer.Option("--k", help="K values of the sweep")],
                       out_dir: Annotated[Path, typer.Option("--out")] = Path("segments"),
                       spatial_weight: float = 1.0, merge_threshold: float = 0.0, min_size: int = 0) -> None:
        """XYRGB k-means over a sweep of K (``--k 50 100 200 300 400``), one overlay per K."""
        files, ks = split_sweep(images, list(k))
        options = {"spatial_weight": spatial_weight, "merge_threshold": merge_threshold, "min_size": min_size}
        written = run_segment(files, "kmeans", out_dir, ks, options)
        print(f"{len(written) // 2} segmentations written to {out_dir}")
