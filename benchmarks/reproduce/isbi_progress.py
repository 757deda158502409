"""Progress of the U-Net ISBI 2012 paper run (issue 17): the RESULTS.md table of its validations.

Reads the run's ``log.csv`` (written by ``pixelseg train benchmarks/reproduce/isbi_unet_paper.yaml``, resumed as
often as needed) and prints the training time logged so far (the sum of its ``seconds``: optimizer steps, not
validations), the best validation by the run's monitor and one Markdown row per validation.

    .venv/bin/python benchmarks/reproduce/isbi_progress.py [--run runs/reproduce/isbi_unet_paper]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MONITOR = "val_pixel_error_best"  # the yaml's train.monitor (lower is better)


def validation_rows(log: Path) -> tuple[list[dict[str, str]], float, int]:
    """The logged validations, the training seconds logged in all and the last step."""
    with log.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{log}: no rows logged yet")
    seconds = sum(float(row["seconds"]) for row in rows if row.get("seconds"))
    return [row for row in rows if row.get(MONITOR)], seconds, int(rows[-1]["step"])


def _cell(row: dict[str, str], key: str, digits: int = 4) -> str:
    """A logged figure, or "–" where the column did not exist yet (metrics added during the run)."""
    value = row.get(key)
    return f"{float(value):.{digits}f}" if value else "–"


def markdown(validations: list[dict[str, str]]) -> list[str]:
    lines = ["| step | pixel error (0.5) | pixel error (best threshold) | 1 − best F-score | Rand error (0.5) | "
             "Rand error (best threshold) | warping error | mIoU | train loss |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in validations:
        lines.append(f"| {row['step']} | {_cell(row, 'val_pixel_error')} | {_cell(row, MONITOR)} "
                     f"(t = {row['val_pixel_error_best_threshold']}) | {_cell(row, 'val_pixel_error_fscore')} | "
                     f"{_cell(row, 'val_rand_error')} | {_cell(row, 'val_rand_error_best')} | "
                     f"{_cell(row, 'val_warping_error', 5)} | {_cell(row, 'val_mean_iou')} | "
                     f"{_cell(row, 'train_loss')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "reproduce" / "isbi_unet_paper")
    args = parser.parse_args()
    validations, seconds, last_step = validation_rows(args.run / "log.csv")
    print(f"last logged step {last_step}; {seconds / 3600:.2f} hours of logged training time")
    if validations:
        best = min(validations, key=lambda row: float(row[MONITOR]))
        since = sum(1 for row in validations if int(row["step"]) > int(best["step"]))
        print(f"best {MONITOR} {float(best[MONITOR]):.4f} at step {best['step']}; {since} validations since")
    print("\n".join(markdown(validations)))


if __name__ == "__main__":
    main()
