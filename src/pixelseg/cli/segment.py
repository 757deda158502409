"""``pixelseg segment`` and ``pixelseg kmeans``: classical segmentation from the command line.

A plugin of ``pixelseg.cli`` (listed in its ``CLI_PLUGINS``): :func:`register` adds the commands.
For every input image and every K it writes ``<name>_<method>[_k<K>]_labels.png`` (the segment index
of each pixel, 16-bit) and ``<name>_<method>[_k<K>]_overlay.png`` (segment boundaries drawn on the
image). Bad input ends in one line naming the file and the problem.

Interactive methods (``graphcut``, ``grabcut``) take a box — ``x0,y0,x1,y1`` in pixels, far corner
exclusive (columns x0..x1-1, rows y0..y1-1; ``0,0,W,H`` is the whole image) — and/or scribbles, either
one for every image of the call (``--box``, ``--scribbles``) or one per image (``--boxes`` a JSON object
``{"name.png": [x0, y0, x1, y1]}`` or a CSV of ``file_name,x0,y0,x1,y1`` rows; ``--scribbles-dir`` a
folder of ``<stem>.png`` scribble images). GrabCut is seeded (``--seed``): the same image and box give
the same mask whatever ran before. k-means splits its clusters into connected regions, so ``--k 10``
gives more than 10 regions; ``--regions N`` merges the most similar adjacent regions until N remain.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..errors import PixelsegError, closest
from ..io.images import read_mask, read_rgb
from .base import err, fail

METHODS = ("kmeans", "slic", "dpgmm", "meanshift", "graphcut", "grabcut")


def read_scribbles(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Scribbles as 0 unknown / 1 foreground / 2 background: an index PNG with those values, or an RGB
    image where pure red marks the foreground and pure blue the background."""
    from ..classical.graphcut import BACKGROUND, FOREGROUND

    if not path.is_file():
        raise PixelsegError("no such scribble file", path)
    pixels = read_mask(path, what="scribble image")
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


Box = tuple[int, int, int, int]
BOX_HELP = "x0,y0,x1,y1 in pixels, far corner exclusive (columns x0..x1-1, rows y0..y1-1; 0,0,W,H = whole image)"


def parse_box(text: str) -> Box:
    parts = text.replace(",", " ").split()
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise PixelsegError(f"--box must be four integers x0,y0,x1,y1, got {text!r}")
    x0, y0, x1, y1 = (int(p) for p in parts)
    return x0, y0, x1, y1


def read_boxes(path: Path) -> dict[str, Box]:
    """Per-image boxes: a JSON object ``{"name.png": [x0, y0, x1, y1], ...}`` or a CSV of
    ``file_name,x0,y0,x1,y1`` rows (a header row is allowed); keys are file names or stems."""
    if not path.is_file():
        raise PixelsegError("no such box file", path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as error:
            raise PixelsegError(f"not valid JSON ({error})", path) from None
        if not isinstance(entries, dict):
            raise PixelsegError('expected a JSON object {"name.png": [x0, y0, x1, y1], ...}', path)
        rows = [[name, *value] if isinstance(value, list) else [name, value] for name, value in entries.items()]
    else:
        rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
        if rows and not rows[0][-1].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
    boxes: dict[str, Box] = {}
    for row in rows:
        values = [str(v).strip() for v in row[1:]]
        if len(values) != 4 or not all(v.lstrip("-").isdigit() for v in values):
            raise PixelsegError(f"the box of {row[0]!r} must be four integers x0, y0, x1, y1, got {row[1:]}", path)
        x0, y0, x1, y1 = (int(v) for v in values)
        boxes[str(row[0]).strip()] = (x0, y0, x1, y1)
    return boxes


def inputs_of(path: Path, options: dict[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
    """The box and scribbles of one image: given for every image, or looked up by its name."""
    found: dict[str, Any] = {"box": options.get("box"), "seeds": None}
    if options.get("boxes") is not None:
        boxes = options["boxes"]
        found["box"] = boxes.get(path.name, boxes.get(path.stem))
    if options.get("scribbles") is not None:
        found["seeds"] = read_scribbles(options["scribbles"], shape)
    if options.get("scribbles_dir") is not None:
        folder = options["scribbles_dir"]
        candidates = [folder / f"{path.stem}.png", folder / f"{path.stem}_scribbles.png"]
        scribbles = next((c for c in candidates if c.is_file()), None)
        if scribbles is not None:
            found["seeds"] = read_scribbles(scribbles, shape)
    return found


def segment_image(image: np.ndarray, method: str, k: int | None, options: dict[str, Any]) -> np.ndarray:
    """The label map of one image by one method."""
    seed = options.get("seed", 0)
    if method in ("kmeans", "slic"):
        from ..classical.kmeans import kmeans_segments, merge_regions, slic_segments

        if method == "slic":
            labels = slic_segments(image, k or 100)
            return labels if options.get("regions") is None else merge_regions(image, labels,
                                                                               target=options["regions"])
        return kmeans_segments(image, k or 100, spatial_weight=options["spatial_weight"],
                               merge_threshold=options["merge_threshold"], min_size=options["min_size"],
                               seed=seed, regions=options.get("regions"))
    if method == "dpgmm":
        from ..classical.clustering import dpgmm_segments

        return dpgmm_segments(image, max_components=k or 20, spatial_weight=options["spatial_weight"], seed=seed)
    if method == "meanshift":
        from ..classical.clustering import mean_shift_segments

        return mean_shift_segments(image, spatial_weight=options["spatial_weight"], seed=seed)
    from ..classical.graphcut import boykov_jolly, grabcut

    seeds, box, iterations = options.get("seeds"), options.get("box"), options.get("iterations")
    if seeds is None and box is None:
        raise PixelsegError(f"--method {method} needs a box or scribbles (--box, --boxes, --scribbles or "
                            "--scribbles-dir)")
    if method == "graphcut":
        iterations = iterations or (5 if box is not None else 1)
        return boykov_jolly(image, seeds, box=box, iterations=iterations).astype(np.int64)
    return grabcut(image, box=box, seeds=seeds, iterations=iterations or 5, seed=seed).astype(np.int64)


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


def run_segment(images: list[Path], method: str, out_dir: Path, ks: list[int], options: dict[str, Any],
                echo: Callable[[str], None] | None = None,
                on_error: Callable[[str], None] | None = None) -> list[Path]:
    """Segment every image with every K (methods without K run once); returns the files written.
    ``echo`` receives a line per k-means result saying how many connected regions its K clusters gave.
    With ``on_error``, a problem with one image (unreadable, no box for it, ...) is reported there in one
    line and the other images are still segmented; without it the first problem is raised."""
    if method not in METHODS:
        raise PixelsegError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
                            + closest(method, METHODS))
    for k in ks:
        if k < 1:
            raise PixelsegError(f"K must be at least 1, got {k}")
    for key in ("regions", "iterations"):
        if options.get(key) is not None and options[key] < 1:
            raise PixelsegError(f"--{key} must be at least 1, got {options[key]}")
    if not images:
        raise PixelsegError("no input images given")
    sweep: list[int | None] = list(ks) if ks and method in ("kmeans", "slic", "dpgmm") else [None]
    written: list[Path] = []
    for path in images:
        try:
            written += _segment_one(path, method, out_dir, sweep, options, echo)
        except PixelsegError as error:
            if on_error is None:
                raise
            on_error(str(error))
    return written


def _segment_one(path: Path, method: str, out_dir: Path, sweep: list[int | None], options: dict[str, Any],
                 echo: Callable[[str], None] | None) -> list[Path]:
    written: list[Path] = []
    image = read_rgb(path)
    per_image = {**options, **inputs_of(path, options, image.shape[:2])}
    if method in ("graphcut", "grabcut") and per_image["box"] is None and per_image["seeds"] is None \
            and (options.get("boxes") is not None or options.get("scribbles_dir") is not None):
        raise PixelsegError("no box in --boxes and no scribbles in --scribbles-dir for this image", path)
    for k in sweep:
        labels = segment_image(image, method, k, per_image)
        if echo is not None and method == "kmeans":
            count = int(labels.max()) + 1
            note = "merged with --regions" if options.get("regions") is not None else \
                "k-means clusters are split into connected regions; --regions N merges down to N"
            echo(f"{path.name}: K = {k or 100} gave {count} regions ({note})")
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


def report_run(run: Callable[..., list[Path]], *args: Any) -> None:
    """Run the segmentation, one line per failed image on stderr; exit 2 at the end if any failed."""
    failed: list[str] = []

    def report(message: str) -> None:
        failed.append(message)
        err.print(f"error: {message}", highlight=False, soft_wrap=True)

    written = run(*args, echo=typer.echo, on_error=report)
    print(f"{len(written) // 2} segmentations written to {args[2]}")
    if failed:
        fail(f"{len(failed)} image(s) failed (see above); the others were written")


def register(app: typer.Typer) -> None:
    """Add ``segment`` and ``kmeans`` to the ``pixelseg`` command."""
    from .base import friendly  # bad input -> one line on stderr, exit code 2

    @app.command()
    @friendly
    def segment(images: Annotated[list[Path], typer.Argument(help="input images")],
                method: Annotated[str, typer.Option(help="|".join(METHODS))] = "kmeans",
                out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("segments"),
                k: Annotated[list[int] | None, typer.Option("--k", help="number of k-means clusters (split into "
                                                            "connected regions, so usually more regions than "
                                                            "K); several values give a sweep")] = None,
                regions: Annotated[int | None, typer.Option(help="kmeans, slic: merge the most similar adjacent "
                                                            "regions until this many remain")] = None,
                spatial_weight: float = 1.0, merge_threshold: float = 0.0, min_size: int = 0,
                scribbles: Annotated[Path | None, typer.Option(help="PNG for every image: 1/red foreground, "
                                                               "2/blue background")] = None,
                scribbles_dir: Annotated[Path | None, typer.Option(help="folder of per-image scribble PNGs "
                                                                   "named <image stem>.png")] = None,
                box: Annotated[str | None, typer.Option(help=f"box for every image: {BOX_HELP}")] = None,
                boxes: Annotated[Path | None, typer.Option(help='per-image boxes: JSON {"name.png": [x0, y0, '
                                                           'x1, y1]} or CSV rows file_name,x0,y0,x1,y1 '
                                                           '(same convention as --box)')] = None,
                iterations: Annotated[int | None, typer.Option(help="rounds of colour-model fitting and cut "
                                                               "(default 5 for grabcut and for graphcut from a "
                                                               "box, 1 for graphcut from scribbles)")] = None,
                seed: Annotated[int, typer.Option(help="random seed (k-means, GrabCut's GMM start)")] = 0
                ) -> None:
        """Classical segmentation: k-means (XYRGB), SLIC, DP-GMM, mean shift, graph cut, GrabCut."""
        if box is not None and boxes is not None:
            raise PixelsegError("give --box (every image) or --boxes (per image), not both")
        if scribbles is not None and scribbles_dir is not None:
            raise PixelsegError("give --scribbles (every image) or --scribbles-dir (per image), not both")
        if scribbles_dir is not None and not scribbles_dir.is_dir():
            raise PixelsegError("no such scribble folder", scribbles_dir)
        files, ks = split_sweep(images, list(k or []))
        options = {"spatial_weight": spatial_weight, "merge_threshold": merge_threshold,
                   "min_size": min_size, "scribbles": scribbles, "scribbles_dir": scribbles_dir,
                   "box": parse_box(box) if box is not None else None,
                   "boxes": read_boxes(boxes) if boxes is not None else None,
                   "iterations": iterations, "regions": regions, "seed": seed}
        report_run(run_segment, files, method, out_dir, ks, options)

    @app.command("kmeans")
    @friendly
    def kmeans_command(images: Annotated[list[Path], typer.Argument(help="input images")],
                       k: Annotated[list[int], typer.Option("--k", help="K values of the sweep (clusters are "
                                                            "split into connected regions: more regions "
                                                            "than K)")],
                       out_dir: Annotated[Path, typer.Option("--out")] = Path("segments"),
                       regions: Annotated[int | None, typer.Option(help="merge the most similar adjacent "
                                                                   "regions until this many remain")] = None,
                       spatial_weight: float = 1.0, merge_threshold: float = 0.0, min_size: int = 0,
                       seed: int = 0) -> None:
        """XYRGB k-means over a sweep of K (``--k 50 100 200 300 400``), one overlay per K; ``--regions N``
        then merges each result down to N regions."""
        files, ks = split_sweep(images, list(k))
        options = {"spatial_weight": spatial_weight, "merge_threshold": merge_threshold, "min_size": min_size,
                   "regions": regions, "seed": seed}
        report_run(run_segment, files, "kmeans", out_dir, ks, options)
