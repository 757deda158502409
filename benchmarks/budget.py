"""Equal CPU budgets for benchmark trainings, resumable across sessions.

A ledger (JSON) per benchmark keeps, per model: its measured CPU seconds per optimizer step, the step count
that fills the budget, the CPU seconds its processes spent (polled from /proc while they run, so a run
killed at the end of a session still counts, and summed over resumptions) and its scores.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
TICKS = os.sysconf("SC_CLK_TCK")


class Ledger(dict):
    """A JSON dict written atomically after every change the caller saves. With ``owned`` (the keys this
    process writes), several runners can share one file: each save re-reads it under a lock and replaces
    only the owned entries."""

    def __init__(self, path: Path, owned: set[str] | None = None) -> None:
        super().__init__(json.loads(path.read_text()) if path.is_file() else {})
        self.path = path
        self.owned = owned

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            contents = dict(self)
            if self.owned is not None and self.path.is_file():
                on_disk = json.loads(self.path.read_text())
                contents = {**on_disk, **{key: value for key, value in self.items() if key in self.owned}}
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(contents, indent=1))
            temporary.replace(self.path)


def seconds_per_step(config_path: Path, overrides: list[str] = (), repeats: int = 5) -> float:
    """CPU seconds of one optimizer step of this config on real (augmented) batches: the median of
    ``repeats`` steps after one warm-up, in this process (set its threads before calling)."""
    from pixelseg.engine.config import load_config
    from pixelseg.engine.train import Trainer, compute_loss

    config = load_config(config_path, [*overrides, f"train.out_dir=/tmp/pixelseg_calibrate_{config_path.stem}"])
    trainer = Trainer(config, quiet=True, hooks=[])
    trainer._setup()
    batches = iter(trainer._epoch_loader())
    model, optimizer = trainer.train_model.train(), trainer.optimizer
    times = []
    for _ in range(repeats + 1):
        batch = next(batches)
        start = time.process_time()
        with trainer.autocast():  # train.precision
            result = compute_loss(trainer.task, model, batch, trainer.criterion, trainer.device)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        times.append(time.process_time() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def calibrate(ledger: Ledger, name: str, config_path: Path, budget_minutes: float,
              overrides: list[str] = ()) -> dict:
    """The model's ledger entry with its seconds per step and step count, measured once."""
    entry = ledger.setdefault(name, {})
    if "seconds_per_step" not in entry:
        entry["seconds_per_step"] = seconds_per_step(config_path, overrides)
        entry["budget_minutes"] = budget_minutes
        entry["steps"] = int(budget_minutes * 60 / entry["seconds_per_step"])
        ledger.save()
    print(f"{name}: {entry['seconds_per_step']:.3f} CPU s/step -> {entry['steps']} steps", flush=True)
    return entry


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a running process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_counted(command: list[str], ledger: Ledger, entry: dict, key: str, log: Path) -> int:
    """Run ``command`` (one thread, output appended to ``log``), adding its CPU seconds to ``entry[key]``."""
    base = entry.get(key, 0.0)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        out.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        seen = 0.0
        while process.poll() is None:
            seen = max(seen, cpu_seconds_of(process.pid))
            entry[key] = base + seen
            ledger.save()
            time.sleep(10)
    entry[key] = base + seen
    ledger.save()
    return process.returncode


def train_to_budget(ledger: Ledger, name: str, config_path: Path, run_dir: Path, overrides: list[str],
                    log: Path) -> None:
    """Train (or resume) the model for its calibrated step count; exits naming the log if it fails."""
    entry = ledger[name]
    if entry.get("trained"):
        return
    command = [str(BIN / "pixelseg"), "train", str(config_path), "--set", f"train.steps={entry['steps']}",
               "--set", f"train.out_dir={run_dir}", *[part for o in overrides for part in ("--set", o)]]
    if (run_dir / "last.safetensors").exists():
        command.append("--resume")
    entry.setdefault("wall_started", time.strftime("%Y-%m-%d %H:%M:%S"))
    if run_counted(command, ledger, entry, "train_cpu_seconds", log) != 0:
        raise SystemExit(f"{name}: training stopped (see {log}); run again to resume")
    entry["trained"] = True
    entry["wall_finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    ledger.save()


def evaluate_once(ledger: Ledger, name: str, variant: str, run_dir: Path, arguments: list[str], log: Path) -> dict:
    """``pixelseg evaluate run_dir *arguments`` once; its scores are kept in the ledger under ``variant``."""
    entry = ledger[name]
    if variant not in entry:
        out = run_dir / f"{variant}.json"
        command = [str(BIN / "pixelseg"), "evaluate", str(run_dir), "--out", str(out), *arguments]
        if run_counted(command, ledger, entry, f"{variant}_cpu_seconds", log) != 0:
            raise SystemExit(f"{name}: evaluation failed (see {log})")
        entry[variant] = json.loads(out.read_text())
        ledger.save()
    return entry[variant]
