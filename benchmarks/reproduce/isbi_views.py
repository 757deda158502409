"""The ISBI 2012 errors of each of the eight symmetries of the input, one at a time and averaged (issue 17).

The paper U-Net's figures are "averaged over 7 rotated versions of the input data" (Ronneberger et al., 2015,
arXiv:1505.04597, Sec. 4); ``pixelseg evaluate --tta-flip --tta-rotate`` averages the eight symmetries of the
square. This prints, for a saved model on sections 25-29, the pixel error and the Rand error at the threshold
0.5 of every single symmetry (its logits turned and mirrored back, :func:`pixelseg.inference.tta.symmetry_logits`)
and of their average (checking that every view lines up with the 0° one), per section and as the mean over the sections (what ``pixelseg evaluate`` reports), so one
can tell whether the averaging helps or whether the identity view is the exception.

    .venv/bin/python benchmarks/reproduce/isbi_views.py [--model runs/reproduce/isbi_unet_paper/best]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pixelseg.data.isbi import ISBI2012
from pixelseg.data.transforms import evaluation_transform
from pixelseg.inference.tta import symmetries, symmetry_logits
from pixelseg.io.saved_model import read_model_config, resolve_model_dir
from pixelseg.metrics.isbi import rand_error
from pixelseg.models.pretrained import from_pretrained

ROOT = Path(__file__).resolve().parents[2]
CELL = 1  # the ISBI2012 reader's class index of cell interior


def view_name(mirrored: bool, turns: int) -> str:
    return ("mirror + " if mirrored else "") + f"{90 * turns}°"


def errors(cell_probability: np.ndarray, cells: np.ndarray) -> tuple[float, float]:
    """Pixel error (the wrong fraction) and Rand error, both at the threshold 0.5."""
    predicted = cell_probability > 0.5
    return float(np.mean(predicted != cells)), rand_error(cells, predicted)


def best_shift(cells: np.ndarray, reference: np.ndarray, reach: int = 2) -> tuple[int, int]:
    """The shift (rows, columns) within ``reach`` pixels at which ``cells`` agrees best with ``reference``
    (away from the borders): ``(0, 0)`` for a view that is turned back correctly."""
    inner = (slice(2 * reach, -2 * reach),) * 2
    agreement = {(dy, dx): np.mean(np.roll(cells, (dy, dx), axis=(0, 1))[inner] == reference[inner])
                 for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)}
    return max(agreement, key=agreement.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "runs/reproduce/isbi_unet_paper/best"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/isbi2012"))
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: no ISBI 2012 data there")
    model_dir = resolve_model_dir(args.model)
    data = read_model_config(model_dir)["data"]
    model = from_pretrained(model_dir).eval()
    sections = ISBI2012(args.data, "val", transform=evaluation_transform(data["mean"], data["std"]))
    views = symmetries(flip=True, rotate=True)
    names = [view_name(*view) for view in views] + ["average of 8"]
    table = []  # per section: (pixel error, Rand error) of every view, then of the average
    for index in range(len(sections)):
        image, mask = sections[index]
        cells = mask.numpy() == CELL
        with torch.no_grad():
            logits = [symmetry_logits(model, image[None], mirrored, turns)[0][0] for mirrored, turns in views]
        maps = [view.softmax(0)[CELL].numpy() for view in logits] + [torch.stack(logits).mean(0).softmax(0)[CELL].numpy()]
        table.append([errors(probability, cells) for probability in maps])
        shifts = {best_shift(probability > 0.5, maps[0] > 0.5) for probability in maps[1:-1]}
        if shifts != {(0, 0)}:
            print(f"warning: views line up with the 0° view only after shifts {sorted(shifts)}")
        print(f"section {sections.samples[index][0].stem}: " + ", ".join(
            f"{name} {pixel:.4f}/{rand:.4f}" for name, (pixel, rand) in zip(names, table[-1], strict=True)), flush=True)
    means = np.asarray(table).mean(0)
    print("\n| view (mean over sections 25–29) | pixel error (0.5) | Rand error (0.5) |\n|---|---:|---:|")
    for name, (pixel, rand) in zip(names, means, strict=True):
        print(f"| {name} | {pixel:.4f} | {rand:.4f} |")


if __name__ == "__main__":
    main()
