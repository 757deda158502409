"""Training steps per second on the CPU: fp32 against bf16 autocast (and bf16 + channels_last), 1 thread.

Each mode trains a small U-Net (``unet``, ``base_channels`` 16, depth 4, BatchNorm, 'same' padding) on the
built-in Shapes images through the real trainer (``engine.train.Trainer``; ``train.precision``,
``train.channels_last``), and a hook times every optimizer step — forward, loss, backward and AdamW — in
process CPU time (other processes share this machine, which wall-clock time would count) and in wall-clock
time. The modes run interleaved for ``--rounds`` rounds of ``--steps`` steps; the first step of each run
(allocation, oneDNN kernel selection) is left out. Printed: the median seconds per step of each mode and
its steps/s ratio against fp32.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_precision.py --rounds 3 --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pixelseg.engine.config import config_from_dict
from pixelseg.engine.train import Hook, LearningRateSchedule, Trainer

MODES = {"fp32": {}, "bf16": {"precision": "bf16"}, "bf16 + channels_last": {"precision": "bf16",
                                                                             "channels_last": True}}


class StepTimer(Hook):
    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_step_start(self, trainer: Trainer) -> None:
        self.started = (time.process_time(), time.perf_counter())

    def on_step_end(self, trainer: Trainer, loss: float, parts: dict[str, float]) -> None:
        self.cpu.append(time.process_time() - self.started[0])
        self.wall.append(time.perf_counter() - self.started[1])


def run(mode: dict, args: argparse.Namespace, out_dir: Path) -> StepTimer:
    config = config_from_dict({
        "model": {"name": "unet", "in_channels": 3,
                  "kwargs": {"padding": "same", "base_channels": args.base_channels, "depth": 4, "batch_norm": True}},
        "data": {"name": "shapes", "num_samples": args.batch_size * args.steps, "val_samples": 1,
                 "image_size": args.size, "batch_size": args.batch_size, "val_batch_size": 1},
        "train": {"steps": args.steps, "threads": args.threads, "out_dir": str(out_dir), **mode},
    })
    timer = StepTimer()
    Trainer(config, quiet=True, hooks=[LearningRateSchedule(), timer]).fit()
    timer.cpu, timer.wall = timer.cpu[1:], timer.wall[1:]
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cpu: dict[str, list[float]] = {name: [] for name in MODES}
    wall: dict[str, list[float]] = {name: [] for name in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, mode in MODES.items():
                timer = run(mode, args, Path(tmp) / f"{round_}-{name.replace(' ', '')}")
                cpu[name] += timer.cpu
                wall[name] += timer.wall
    print(f"torch {torch.__version__}, {args.threads} thread(s); U-Net base {args.base_channels}, depth 4, "
          f"batch {args.batch_size}x3x{args.size}x{args.size}; {args.rounds} rounds x {args.steps - 1} timed steps")
    base_cpu, base_wall = statistics.median(cpu["fp32"]), statistics.median(wall["fp32"])
    print(f"{'mode':<22} {'CPU s/step':>10} {'steps/s':>8} {'ratio':>6}   {'wall s/step':>11} {'ratio':>6}")
    for name in MODES:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:<22} {c:>10.4f} {1 / c:>8.2f} {base_cpu / c:>5.2f}x   {w:>11.4f} {base_wall / w:>5.2f}x")


if __name__ == "__main__":
    main()
