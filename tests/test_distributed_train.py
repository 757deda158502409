"""``torchrun -m pixelseg train``: DDP over Gloo on loopback, the batches each process takes, resume under
torchrun and evaluation split over processes (issue 18)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import BatchSampler, RandomSampler

from pixelseg.engine.config import load_config
from pixelseg.engine.distributed import EvaluationShard, ShardedBatches, global_batch_count
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.train import train
from pixelseg.io.checkpoint import load_state_dict

TORCHRUN = Path(sys.executable).with_name("torchrun")


def sharded(n: int, batch_size: int, drop_last: bool, seed: int, **kw) -> ShardedBatches:
    return ShardedBatches(list(range(n)), batch_size, drop_last, torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize(("n", "drop_last"), [(8, False), (11, False), (11, True)])
def test_one_process_takes_the_batches_of_a_shuffled_dataloader(n: int, drop_last: bool) -> None:
    expected = list(BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(5)), 3, drop_last))
    batches = sharded(n, 3, drop_last, 5)
    assert list(batches) == expected and len(batches) == len(expected)
    assert global_batch_count(n, 3, drop_last) == len(expected)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_processes_split_each_global_batch_into_equal_shares(accumulate: int) -> None:
    n, batch, world = 11, 2, 2  # 11 images are padded to 12 (the epoch's first image twice)
    alone = list(BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(3)),
                              batch * world * accumulate, False))
    ranks = [list(sharded(n, batch, False, 3, rank=r, world_size=world, accumulate=accumulate))
             for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == len(sharded(n, batch, False, 3, world_size=world,
                                                         accumulate=accumulate))
    assert all(len(a) == len(b) > 0 for a, b in zip(*ranks, strict=True))  # same sizes, none empty
    steps = global_batch_count(n, batch, False, world, accumulate)
    position = 0
    for step in range(steps):
        sizes = sharded(n, batch, False, 3, world_size=world, accumulate=accumulate).micro_batch_sizes(step)
        taken = [i for m in range(len(sizes)) for r in range(world) for i in ranks[r][position + m]]
        assert [len(ranks[0][position + m]) * world for m in range(len(sizes))] == sizes
        position += len(sizes)
        if step < steps - 1:
            assert taken == alone[step]  # a full step: exactly one process's batch of batch·world·accumulate
        else:
            assert taken == alone[step] + [alone[0][0]]  # the last one, padded to a multiple of the processes
    assert position == len(ranks[0])


def test_evaluation_shards_take_every_image_once() -> None:
    shards = [list(EvaluationShard(list(range(7)), r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(EvaluationShard(list(range(7)), r, 3)) for r in range(3)] == [3, 2, 2]


CONFIG = {
    # No BatchNorm and no dropout: DDP's averaged gradient equals the gradient of the doubled batch.
    "model": {"name": "unet", "kwargs": {"padding": "same", "base_channels": 4, "depth": 2, "batch_norm": False,
                                     "dropout": 0.0}},
    "data": {"name": "shapes", "num_samples": 8, "val_samples": 3, "image_size": 32, "batch_size": 2,
             "val_batch_size": 1, "hflip": False},
    "optim": {"lr": 0.01},
    "train": {"epochs": 2, "threads": 1},
}


def write_config(tmp_path: Path, name: str, **train) -> Path:
    values = {key: dict(value) for key, value in CONFIG.items()}
    values["train"].update({"out_dir": str(tmp_path / name), **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def torchrun(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "COLUMNS": "200"}
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "pixelseg", *args],
                            capture_output=True, text=True, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_two_gloo_processes_stopped_and_resumed_reach_the_weights_of_one_with_the_doubled_batch(
        tmp_path: Path) -> None:
    alone = load_config(write_config(tmp_path, "alone"), ["data.batch_size=4"])
    train(alone, quiet=True)
    # Two processes of 2 images each; a time budget stops them after their first step, --resume finishes.
    config = write_config(tmp_path, "ddp", max_minutes=0.0001)
    torchrun("train", str(config), "--quiet")
    run = tmp_path / "ddp"
    assert [int(r["step"]) for r in csv.DictReader((run / "log.csv").open())] == [1]
    torchrun("train", str(config), "--quiet", "--resume", "--set", "train.max_minutes=null")
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 4]
    reference, both = (load_state_dict(tmp_path / name / "last_model" / "model.safetensors")
                       for name in ("alone", "ddp"))
    assert reference.keys() == both.keys()
    for name, value in reference.items():
        torch.testing.assert_close(both[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # The last validation, split over the two processes and all-reduced, is the single-process score.
    scores = evaluate(run / "last_model", batch_size=1)
    assert float(rows[-1]["val_mean_iou"]) == pytest.approx(scores["mean_iou"], abs=1e-12)
    assert float(rows[-1]["val_pixel_accuracy"]) == pytest.approx(scores["pixel_accuracy"], abs=1e-12)
    # pixelseg evaluate under torchrun: each process scores its share, both report the whole split.
    torchrun("evaluate", str(run / "last_model"), "--out", str(tmp_path / "scores.json"))
    shared = json.loads((tmp_path / "scores.json").read_text())
    assert shared["images"] == 3
    for key in ("mean_iou", "pixel_accuracy", "iou_per_class", "frequency_weighted_iou"):
        assert shared[key] == scores[key], key
