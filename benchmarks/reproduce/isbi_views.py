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
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pixelseg.data.build import build_eval_dataset
from pixelseg.engine.evaluate import saved_data_config
from pixelseg.errors import PixelsegError
from pixelseg.inference.tta import symmetries, symmetry_logits
from pixelseg.io.saved_model import resolve_model_dir
from pixelseg.metrics.isbi import ISBIChallengeErrors, cell_probabilities
from pixelseg.models.pretrained import from_pretrained
from pixelseg.tasks.base import model_info

ROOT = Path(__file__).resolve().parents[2]
CELL = 1  # the ISBI2012 reader's class index of cell interior


def view_name(mirrored: bool, turns: int) -> str:
    return ("mirror + " if mirrored else "") + f"{90 * turns}°"


def errors(logits: Tensor, mask: Tensor) -> tuple[float, float]:
    """Pixel error (the wrong fraction) and Rand error of one section, both at the threshold 0.5, scored by
    the evaluator ``pixelseg evaluate`` uses."""
    evaluator = ISBIChallengeErrors(CELL, thresholds=(0.5,))
    evaluator.update(logits[None], mask[None])
    scores = evaluator.compute()
    return scores["pixel_error"], scores["rand_error"]


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
    parser.add_argument("--data", help="the ISBI 2012 folder (default: the one the model was trained on)")
    args = parser.parse_args()
    try:  # the validation split of the model's own dataset, as `pixelseg evaluate` builds it
        model_dir = resolve_model_dir(args.model)
        model = from_pretrained(model_dir).eval()
        data_config = saved_data_config(model, model_dir)
        if args.data:
            data_config = dataclasses.replace(data_config, root=args.data)
        sections = build_eval_dataset(data_config, model_info(model, model_dir), data_config.val_split)
    except PixelsegError as err:
        raise SystemExit(str(err)) from None
    views = symmetries(flip=True, rotate=True)
    names = [view_name(*view) for view in views] + ["average of 8"]
    table = []  # per section: (pixel error, Rand error) of every view, then of the average
    for index in range(len(sections)):
        image, mask = sections[index]
        with torch.no_grad():
            logits = [symmetry_logits(model, image[None], mirrored, turns)[0][0] for mirrored, turns in views]
        logits.append(torch.stack(logits).mean(0))  # the average of the 8, as --tta-flip --tta-rotate
        table.append([errors(view, mask) for view in logits])
        cells = [cell_probabilities(view[None], mask[None], CELL)[0].numpy() > 0.5 for view in logits[:-1]]
        shifts = {best_shift(view, cells[0]) for view in cells[1:]}
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
