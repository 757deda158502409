"""CamVid, one recipe, the main families (issue 17): each model trained from scratch for the same CPU budget,
then scored on the 233 test frames at 360x480 without and with the dense CRF. Resumable: run it again and it
continues where it stopped (``runs/reproduce/camvid/ledger.json`` keeps the step counts, the CPU seconds spent
and the scores).

    .venv/bin/python benchmarks/reproduce/camvid.py [--budget-minutes 47] [--only unet_r18 ...] [--calibrate]
    .venv/bin/python benchmarks/reproduce/camvid.py --table        # the RESULTS.md tables from the ledger

Two runners with disjoint ``--only`` lists may run at once (one per core): they share the ledger safely.

Budget: the CPU time of the optimizer steps (``benchmarks/budget.py``): each model's seconds per step are
measured first (one thread, real augmented batches) and ``train.steps`` is set so that the steps fill the
budget; the poly schedule then ends at the budget. ``unet_r18_bf16`` is the U-Net again in bf16 autocast with
the same budget (issue 18: what bf16 does to a fixed-budget score on this CPU). Validations run four times per training on the 101
validation frames and are counted in the CPU minutes reported, not in the budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from budget import ROOT, Ledger, calibrate, evaluate_once, train_to_budget  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "camvid"
RUNS = ROOT / "runs" / "reproduce" / "camvid"
MODELS = ["unet_r18", "deeplabv3plus_r18", "pspnet_r18", "fc_densenet56", "segnet", "unet_r18_bf16"]


def run_model(name: str, budget_minutes: float, ledger: Ledger) -> None:
    config, run_dir, log = CONFIGS / f"{name}.yaml", RUNS / name, RUNS / f"{name}.log"
    entry = calibrate(ledger, name, config, budget_minutes)
    train_to_budget(ledger, name, config, run_dir, [f"train.val_every_steps={max(entry['steps'] // 4, 1)}"], log)
    for variant, extra in (("test", []), ("test_crf", ["--refine", "crf"])):
        evaluate_once(ledger, name, variant, run_dir,
                      ["--split", "test", "--report", str(run_dir / f"report_{variant}"), *extra], log)


def table(ledger: Ledger) -> str:
    def cell(scores: dict, key: str) -> str:
        return f"{scores[key]:.4f}" if key in scores else "—"

    rows = ["| model | steps | CPU s/step | train CPU min | test mIoU | + dense CRF | pixel acc. | + CRF |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    classes, per_class = None, []
    for name in MODELS:
        entry = ledger.get(name)
        if not entry:
            continue
        plain, crf = entry.get("test", {}), entry.get("test_crf", {})
        rows.append(f"| {name} | {entry.get('steps', '—')} | {entry.get('seconds_per_step', 0):.2f} | "
                    f"{entry.get('train_cpu_seconds', 0) / 60:.1f} | {cell(plain, 'mean_iou')} | "
                    f"{cell(crf, 'mean_iou')} | {cell(plain, 'pixel_accuracy')} | {cell(crf, 'pixel_accuracy')} |")
        for variant, scores in (("", plain), (" + CRF", crf)):
            if "iou_per_class" in scores:
                classes = classes or scores.get("classes")
                per_class.append(f"| {name}{variant} | " + " | ".join(f"{v:.3f}" for v in scores["iou_per_class"])
                                 + " |")
    if classes:
        rows += ["", "| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes), *per_class]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=47.0)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--calibrate", action="store_true", help="only measure every model's seconds per step")
    args = parser.parse_args()
    names = args.only or MODELS
    ledger = Ledger(RUNS / "ledger.json", owned=None if args.table else set(names))
    if not args.table:
        for name in names:
            if args.calibrate:
                calibrate(ledger, name, CONFIGS / f"{name}.yaml", args.budget_minutes)
            else:
                run_model(name, args.budget_minutes, ledger)
    print(table(ledger))


if __name__ == "__main__":
    main()
