"""The instance family at one equal CPU budget (issue 15): Mask R-CNN, PANet, FCIS, YOLACT, PolarMask and
TensorMask trained from scratch on the built-in synthetic instance set with the same backbone, data, optimizer
and CPU budget; mask and box AP on unseen test images; inference latency of each at one image size and one
thread, side by side in one process. Resumable (``runs/instance_family/ledger.json``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instance_family.py [--budget-minutes 6] [--only yolact ...]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instance_family.py --latency-only [--rounds 20]
    .venv/bin/python benchmarks/instance_family.py --table

The recipe shared by all: MobileNetV3-Large (random initialisation) with a 64-channel FPN (FCIS, which has no
FPN: its config's 128-channel head on stride 16), 128x128 images,
batches of 4 with left-right flips, AdamW 1e-3 with 50 warm-up steps and x0.1 at 75 % and 90 % of the steps,
gradient clipping at 10, one thread; each model's own losses and heads as in its paper (reduced widths as its
config file says). The step count of each fills the budget at its measured CPU seconds per step
(``benchmarks/budget.py``). Test: 300 images of the test split (a seed no training image comes from).
Latency: process CPU time of ``model([image])`` in eval mode on the same 20 test images, the models taking
turns, median per model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget import ROOT, Ledger, calibrate, evaluate_once, train_to_budget  # noqa: E402

RUNS = ROOT / "runs" / "instance_family"
CONFIGS = ROOT / "configs" / "instance"
MODELS = {  # name: its configuration file (the model's own head settings)
    "mask_rcnn": "synthetic_mobilenet_cpu.yaml",
    "panet": "synthetic_panet_cpu.yaml",
    "fcis": "synthetic_fcis_cpu.yaml",
    "yolact": "synthetic_yolact_cpu.yaml",
    "polarmask": "synthetic_polarmask_cpu.yaml",
    "tensormask": "synthetic_tensormask_cpu.yaml",
}
FPN_WIDTH = "model.kwargs.fpn_channels=64"  # FCIS has no FPN: its config's 128-channel head on stride 16
SHARED = ["model.kwargs.backbone=mobilenet_v3_large",
          "data.num_samples=4000", "data.val_samples=100", "data.image_size=128", "data.seed=0", "data.batch_size=4",
          "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.0001", "optim.schedule=step",
          "optim.warmup_steps=50", "optim.grad_clip=10.0", "train.threads=1", "train.seed=0",
          "train.checkpoint_every_steps=50"]
TEST = ["--split", "test", "--set", "data.val_samples=300", "--no-report"]


def run_model(name: str, budget_minutes: float, ledger: Ledger) -> None:
    config, run_dir, log = CONFIGS / MODELS[name], RUNS / name, RUNS / f"{name}.log"
    shared = SHARED if name == "fcis" else [*SHARED, FPN_WIDTH]
    entry = calibrate(ledger, name, config, budget_minutes, shared)
    train_to_budget(ledger, name, config, run_dir, [*shared, f"train.val_every_steps={entry['steps']}"], log)
    evaluate_once(ledger, name, "test", run_dir, TEST, log)


def latency(ledger: Ledger, names: list[str], rounds: int, images: int = 20) -> None:
    """Median CPU seconds per image of every trained model, the models taking turns image by image."""
    import torch

    from pixelseg.data.build import build_data, build_eval_dataset
    from pixelseg.engine.config import load_config
    from pixelseg.models.pretrained import from_pretrained

    torch.set_num_threads(1)
    trained = [n for n in names if ledger.get(n, {}).get("trained")]
    if not trained:
        return
    models = {n: from_pretrained(RUNS / n).eval() for n in trained}
    config = load_config(CONFIGS / MODELS[trained[0]], [*SHARED, "data.val_samples=300"])
    dataset = build_eval_dataset(config.data, build_data(config.data).info, "test")
    pictures = [dataset[i][0] for i in range(images)]
    seconds: dict[str, list[float]] = {n: [] for n in trained}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model([pictures[0]])
        for _ in range(rounds):
            for picture in pictures:
                for name, model in models.items():
                    start = time.process_time()
                    model([picture])
                    seconds[name].append(time.process_time() - start)
    for name in trained:
        ledger[name]["latency_ms"] = 1e3 * statistics.median(seconds[name])
        ledger[name]["latency_size"] = list(pictures[0].shape[-2:])
        print(f"{name}: {ledger[name]['latency_ms']:.1f} ms per {pictures[0].shape[-1]}² image", flush=True)
    ledger.save()


def table(ledger: Ledger) -> str:
    rows = ["| model | steps | CPU s/step | train CPU min | mask AP | AP50 | AP75 | box AP | latency ms (1 thread) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        entry = ledger.get(name)
        if not entry:
            continue
        test = entry.get("test", {})
        cell = {key: f"{test[key]:.3f}" if key in test else "—" for key in ("mask_AP", "mask_AP50", "mask_AP75",
                                                                              "box_AP")}

        lat = f"{entry['latency_ms']:.1f}" if "latency_ms" in entry else "—"
        rows.append(f"| {name} | {entry.get('steps', '—')} | {entry.get('seconds_per_step', 0):.3f} | "
                    f"{entry.get('train_cpu_seconds', 0) / 60:.1f} | {cell['mask_AP']} | {cell['mask_AP50']} | "
                    f"{cell['mask_AP75']} | {cell['box_AP']} | {lat} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=6.0)
    parser.add_argument("--only", nargs="*", default=None, choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    ledger = Ledger(RUNS / "ledger.json")
    names = args.only or list(MODELS)
    if not args.table:
        if not args.latency_only:
            for name in names:
                run_model(name, args.budget_minutes, ledger)
        latency(ledger, names, args.rounds)
    print(table(ledger))


if __name__ == "__main__":
    main()
