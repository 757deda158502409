"""Markdown table of the context-model CamVid runs (runs/context/<model>/{plain,tta}.json, times.txt).

    python benchmarks/context/summarize.py [runs/context]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

METRICS = ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "frequency_weighted_iou")
ORDER = ("deeplabv1", "deeplabv2", "deeplabv3", "deeplabv3plus", "pspnet", "fastfcn", "hrnetv2_w18", "danet",
         "sharpmask", "sharpmask_c128", "hmsa")


def row(run: Path) -> str | None:
    if not (run / "plain.json").is_file():
        return None
    config = yaml.safe_load((Path("benchmarks/context") / f"{run.name}.yaml").read_text())
    steps = config["train"]["epochs"] * config["train"]["max_steps_per_epoch"]
    times = dict(line.split(maxsplit=1) for line in (run / "times.txt").read_text().splitlines()) \
        if (run / "times.txt").is_file() else {}  # the last evaluation's times
    plain = json.loads((run / "plain.json").read_text())
    tta = json.loads((run / "tta.json").read_text()) if (run / "tta.json").is_file() else None
    # training wall clock: from the run's config.yaml (written at the start) to best/ (after the last validation)
    train_s = (run / "best" / "metrics.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    cells = [run.name, config["model"].get("encoder") or "(paper's)", str(steps), f"{train_s:.0f}"]
    for key in METRICS:
        cells.append(f"{plain[key]:.4f} / {tta[key]:.4f}" if tta else f"{plain[key]:.4f} / n/a")
    cells.append(f"{times.get('eval_plain_s', '?')} / {times.get('eval_tta_s', '?')}")
    return "| " + " | ".join(cells) + " |"


def flip_row(run: Path) -> str | None:
    if not (run / "tta_flip.json").is_file():
        return None
    scores = json.loads((run / "tta_flip.json").read_text())
    return "| " + " | ".join([run.name] + [f"{scores[key]:.4f}" for key in METRICS]) + " |"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/context")
    print("| model | encoder | steps (x8 crops) | train s | pixel acc. plain / TTA | mean acc. plain / TTA "
          "| mIoU plain / TTA | fwIoU plain / TTA | eval s plain / TTA |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ORDER:
        line = row(root / name)
        if line:
            print(line)
    print("\nWith the flip too (--tta-scales 0.75,1,1.25 --tta-flip):\n")
    print("| model | pixel acc. | mean acc. | mIoU | fwIoU |")
    print("|---|---|---|---|---|")
    for name in ORDER:
        line = flip_row(root / name)
        if line:
            print(line)


if __name__ == "__main__":
    main()
