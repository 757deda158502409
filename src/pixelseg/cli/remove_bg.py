"""``pixelseg remove-bg PHOTO_OR_DIR... --out DIR (--model DIR | --box x,y,w,h)``: cut-outs as RGBA PNGs.

With ``--model`` (any binary or semantic model saved by ``pixelseg train``) the foreground is the pixels
of one class: ``--class NAME``, else the class named ``foreground``, ``horse`` or ``person``, else class 1
of a two-class model (:func:`pixelseg.refiners.matting.foreground_class`). Without a model, ``--box
x,y,w,h`` (left, top, width, height in pixels: columns x..x+w-1, rows y..y+h-1) runs GrabCut from that
rectangle on every photo. The hard mask is refined into an alpha matte (``--refine``, see
:mod:`pixelseg.refiners.matting`). Each photo gives ``<stem>.png`` (RGBA, the photo's size after its EXIF
orientation) and with ``--alpha-png`` ``<stem>_alpha.png`` (the matte, 8-bit grey). Large photos go
through the tiled path (``--tile``, automatic past :data:`AUTO_TILE_PIXELS`); ``--model-side`` runs
the model on a copy resized to the scale it was trained at (the mask is resized back and refined at the
photo's size). A photo that cannot be
cut out is reported in one line and the others are still written; the exit code is 2 if any failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image

from ..errors import PixelsegError
from ..refiners.matting import DEFAULT_REFINEMENT, REFINEMENTS
from .base import err, fail, friendly

AUTO_TILE_PIXELS = 4096 * 4096  # photos with more pixels run the model tile by tile ...
AUTO_TILE = 1024  # ... on tiles of this side


def parse_xywh(text: str) -> tuple[int, int, int, int]:
    """``x,y,w,h`` → the box ``(x0, y0, x1, y1)`` of :mod:`pixelseg.classical.graphcut` (far corner exclusive)."""
    parts = text.replace(",", " ").split()
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise PixelsegError(f"--box must be four integers x,y,w,h (left, top, width, height), got {text!r}")
    x, y, w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise PixelsegError(f"--box width and height must be at least 1 pixel, got {w}x{h}")
    return x, y, x + w, y + h


def list_photos(inputs: list[Path]) -> list[Path]:
    from ..io.images import list_images

    photos: list[Path] = []
    for item in inputs:
        photos += list_images(item) if item.is_dir() else [item]
    if not photos:
        raise PixelsegError("no photos given (the folders hold no images)")
    return photos


class ModelCutter:
    """A saved semantic model: photo → foreground mask (its class ``foreground``), tiled when large."""

    def __init__(self, model_path: Path, wanted: str | None, tile: int | None, device: str,
                 model_side: int | None = None) -> None:
        from ..engine.evaluate import task_of
        from ..inference.runner import InferenceOptions
        from ..io.saved_model import resolve_model_dir
        from ..models.pretrained import from_pretrained
        from ..refiners.matting import foreground_class
        from ..tasks.base import PredictOptions, model_info
        from ..tasks.semantic import ImagePredictor

        model_dir = resolve_model_dir(model_path)
        model = from_pretrained(model_dir).to(device).eval()
        task = task_of(model)
        if task.name != "semantic":
            raise PixelsegError(f"remove-bg needs a semantic (or binary) model, not a {task.name} one", model_dir)
        self.info = model_info(model, model_dir)
        self.foreground = foreground_class(self.info.classes, wanted)

        def predictor(tile_side: int | None) -> ImagePredictor:
            inference = InferenceOptions(tile=tile_side, overlap=min(64, tile_side // 2) if tile_side else 64)
            return ImagePredictor(model, model_dir, self.info, PredictOptions(device=device, inference=inference))

        self.model_side = model_side
        self.whole = predictor(tile)
        self.tiled = self.whole if tile is not None else predictor(AUTO_TILE)

    def mask(self, photo: Image.Image, path: Path) -> np.ndarray:
        from ..io.images import to_mode

        image = photo if self.info.image_mode == "RGB" else to_mode(photo, self.info.image_mode)
        if self.model_side is not None and max(image.size) != self.model_side:
            scale = self.model_side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        predictor = self.tiled if image.width * image.height > AUTO_TILE_PIXELS else self.whole
        mask = predictor.labels(image, path) == self.foreground
        if mask.shape != (photo.height, photo.width):  # back to the photo's size; the refinement softens it
            mask = np.asarray(Image.fromarray(mask).resize(photo.size, Image.Resampling.NEAREST))
        return mask


def cut_out(path: Path, out_dir: Path, mask_of: Any, refine: str, band: int | None, alpha_png: bool) -> list[Path]:
    """Write the cut-out of one photo (and its matte); the files written. ``mask_of(photo, path)`` gives
    the hard foreground mask of the decoded photo (turned by its EXIF orientation)."""
    from ..io.checkpoint import atomic_write_bytes
    from ..io.images import read_image
    from ..io.render import png_bytes
    from ..refiners.matting import alpha_matte, rgba

    image = read_image(path, "RGB")
    mask = mask_of(image, path)
    photo = np.asarray(image)
    alpha = alpha_matte(photo, mask, refine, band=band)
    target = out_dir / f"{path.stem}.png"
    atomic_write_bytes(target, png_bytes(Image.fromarray(rgba(photo, alpha), "RGBA")))
    written = [target]
    if alpha_png:
        matte = out_dir / f"{path.stem}_alpha.png"
        atomic_write_bytes(matte, png_bytes(Image.fromarray(rgba(photo, alpha)[..., 3], "L")))
        written.append(matte)
    return written


def register(app: typer.Typer) -> None:
    """Add ``remove-bg`` to the ``pixelseg`` command."""

    @app.command("remove-bg")
    @friendly
    def remove_bg(inputs: Annotated[list[Path], typer.Argument(help="photos or folders of photos")],
                  out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
                  model: Annotated[Path | None, typer.Option(help="model or run directory (binary or semantic)")]
                  = None,
                  class_name: Annotated[str | None, typer.Option(
                      "--class", help="the foreground class (default: the class named foreground, horse or "
                                      "person, else class 1 of a binary model)")] = None,
                  box: Annotated[str | None, typer.Option(
                      help="without --model: GrabCut from the rectangle x,y,w,h (left, top, width, height)")]
                  = None,
                  refine: Annotated[str, typer.Option(help="|".join(REFINEMENTS))] = DEFAULT_REFINEMENT,
                  alpha_png: Annotated[bool, typer.Option(help="also write <stem>_alpha.png, the matte")] = False,
                  band: Annotated[int | None, typer.Option(
                      help="half-width in pixels of the refined ring around the edge (default: 1% of the "
                           "longer side)")]
                  = None,
                  tile: Annotated[int | None, typer.Option(
                      help=f"model tile side (default: the whole photo; {AUTO_TILE} past {AUTO_TILE_PIXELS:,} "
                           "pixels)")] = None,
                  model_side: Annotated[int | None, typer.Option(
                      help="the model sees the photo resized to this longer side (the scale it was trained "
                           "at); the mask is resized back (default: the photo's own size)")] = None,
                  seed: Annotated[int, typer.Option(help="GrabCut's random seed")] = 0,
                  device: str = "cpu") -> None:
        """Cut the foreground out of photos: an RGBA PNG each, with soft edges."""
        from ..classical.graphcut import grabcut

        if (model is None) == (box is None):
            fail("give either --model (a trained model) or --box x,y,w,h (GrabCut), not both or neither")
        if refine not in REFINEMENTS:
            fail(f"--refine must be one of {', '.join(REFINEMENTS)}, got {refine!r}")
        if band is not None and band < 0:
            fail(f"--band must be at least 0 pixels, got {band}")
        if tile is not None and tile < 16:
            fail(f"--tile must be at least 16 pixels, got {tile}")
        if model_side is not None and model_side < 16:
            fail(f"--model-side must be at least 16 pixels, got {model_side}")
        if model is None and class_name is not None:
            fail("--class picks a class of --model's; GrabCut (--box) has none")
        photos = list_photos(inputs)
        if model is not None:
            mask_of = ModelCutter(model, class_name, tile, device, model_side).mask
        else:
            rectangle = parse_xywh(box or "")

            def mask_of(photo: Image.Image, path: Path) -> np.ndarray:
                x0, y0, x1, y1 = rectangle
                if x0 < 0 or y0 < 0 or x1 > photo.width or y1 > photo.height:
                    raise PixelsegError(f"--box {box} (x,y,w,h) is not inside the {photo.width}x{photo.height} "
                                        f"photo", path)
                return grabcut(np.asarray(photo), box=rectangle, seed=seed)

        out_dir.mkdir(parents=True, exist_ok=True)
        failed = 0
        for path in photos:
            try:
                cut_out(path, out_dir, mask_of, refine, band, alpha_png)
            except PixelsegError as error:
                failed += 1
                err.print(f"error: {error}", highlight=False, soft_wrap=True)
        print(f"{len(photos) - failed} cut-out(s) written to {out_dir}")
        if failed:
            fail(f"{failed} photo(s) failed (see above); the others were written")
