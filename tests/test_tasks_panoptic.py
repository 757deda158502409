"""Panoptic segmentation through the one engine: synthetic data, Panoptic FPN, PQ, COCO panoptic predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MASK_RCNN, run_cli, write_config
from PIL import Image

from pixelseg.data.build import build_data, task_of_dataset
from pixelseg.data.coco_panoptic import read_panoptic
from pixelseg.data.config import DataConfig
from pixelseg.data.synthetic_panoptic import CATEGORIES, IGNORE, SyntheticPanoptic
from pixelseg.engine.config import load_config
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.predict import predict
from pixelseg.errors import PixelsegError

TINY_CONFIG = {
    "task": "panoptic",
    "model": {"name": "panoptic_fpn", "kwargs": {**TINY_MASK_RCNN, "semantic_channels": 16}},
    "data": {"name": "synthetic_panoptic", "num_samples": 8, "val_samples": 3, "image_size": 64, "batch_size": 2},
    "loss": [],
    "optim": {"name": "adamw", "lr": 1e-3, "schedule": "step", "warmup_steps": 1, "grad_clip": 10.0},
    "train": {"steps": 2, "val_every_steps": 100, "checkpoint_every_steps": 1, "threads": 1,
              "precise_bn_batches": 2},
}


def test_synthetic_panoptic_is_deterministic_and_consistent():
    first, again = SyntheticPanoptic(3, size=96, seed=4)[2], SyntheticPanoptic(3, size=96, seed=4)[2]
    for key, value in first[1].items():
        assert torch.equal(value, again[1][key]), key
    assert torch.equal(first[0], again[0])
    assert not torch.equal(first[0], SyntheticPanoptic(3, size=96, seed=4, split="val")[2][0])
    for index in range(6):
        _, target = SyntheticPanoptic(6, size=96, seed=1)[index]
        ids, semantic, segments = target["panoptic"], target["semantic"], target["segments"]
        things = {row[0]: row[1] for row in segments.tolist() if row[1] <= 3}
        # every instance mask is exactly one thing segment of its category, and the semantic target puts
        # every thing pixel in the one "other" class (0), every stuff pixel in its stuff class, void on void
        assert len(things) == len(target["masks"])
        for mask, label in zip(target["masks"].bool(), target["labels"].tolist(), strict=True):
            segment = int(ids[mask][0])
            assert bool((ids[mask] == segment).all()) and int((ids == segment).sum()) == int(mask.sum())
            assert things[segment] == label
        assert bool((semantic[target["masks"].bool().any(0)] == 0).all())
        for segment, category, _ in segments.tolist():
            if category > 3:
                assert bool((semantic[ids == segment] == category - 3).all())
        assert bool((semantic[ids == 0] == IGNORE).all()) and bool((ids[semantic == IGNORE] == 0).all())
        annotation = SyntheticPanoptic(6, size=96, seed=1).annotation(index)
        assert np.array_equal(annotation.ids, ids.numpy())


def test_flipped_training_samples_flip_every_map():
    torch.manual_seed(0)
    plain = SyntheticPanoptic(8, size=64)
    flipped = SyntheticPanoptic(8, size=64, hflip=True)
    changed = 0
    for index in range(8):
        (image, target), (image_f, target_f) = plain[index], flipped[index]
        if not torch.equal(image, image_f):
            changed += 1
            assert torch.equal(image.flip(-1), image_f)
            for key in ("masks", "semantic", "panoptic"):
                assert torch.equal(target[key].flip(-1), target_f[key]), key
    assert 0 < changed < 8


def test_panoptic_data_builds_with_its_task_and_refuses_other_options():
    assert task_of_dataset("synthetic_panoptic") == "panoptic"
    bundle = build_data(DataConfig(name="synthetic_panoptic", num_samples=4, val_samples=2, image_size=64))
    assert bundle.kind == "panoptic" and bundle.collate is not None
    assert bundle.info.classes == [c["name"] for c in CATEGORIES]
    assert bundle.info.isthing == [True, True, True, False, False, False]
    images, targets = bundle.collate([bundle.val[0], bundle.val[1]])
    assert len(images) == 2 and "semantic" in targets[0]
    with pytest.raises(PixelsegError, match="crop_size applies to 2D images"):
        build_data(DataConfig(name="synthetic_panoptic", crop_size=32))
    with pytest.raises(PixelsegError, match="task is 'instance' but data.name 'synthetic_panoptic' is a panoptic"):
        load_config(None, ["data.name=synthetic_panoptic", "task=instance"])
    with pytest.raises(PixelsegError, match="class statistics"):
        bundle.class_stats()


def test_panoptic_trains_evaluates_and_predicts_through_the_one_engine(tmp_path: Path):
    config = write_config(tmp_path, TINY_CONFIG, "panoptic")
    run_cli("train", config)
    run = tmp_path / "panoptic"
    for name in ("log.csv", "last.safetensors", "best/config.json", "best/model.safetensors"):
        assert (run / name).is_file(), name
    log = (run / "log.csv").read_text()
    assert "loss_semantic" in log and "val_PQ" in log
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["task"] == "panoptic" and saved["name"] == "panoptic_fpn"

    scores = evaluate(run, split="test")
    assert scores["task"] == "panoptic" and scores["images"] == 3
    for name in ("PQ", "SQ", "RQ", "PQ_things", "PQ_stuff", "RQ_things", "SQ_stuff"):
        assert name in scores
    # --no-report: engine/report.py draws no panoptic report yet (see docs/panoptic.md)
    printed = run_cli("evaluate", run, "--split", "test", "--no-report", "--out", tmp_path / "metrics.json")
    assert "PQ_things" in printed
    assert json.loads((tmp_path / "metrics.json").read_text())["PQ"] == pytest.approx(scores["PQ"], nan_ok=True)

    image, _ = SyntheticPanoptic(1, size=64, split="test")[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "x.png")
    Image.new("RGB", (64, 64), (30, 60, 90)).save(tmp_path / "y.png")
    report = predict(run, tmp_path, tmp_path / "pred", score_threshold=0.0)
    assert not report.failed
    assert (tmp_path / "pred" / "x_panoptic.png").is_file() and (tmp_path / "pred" / "y_panoptic.png").is_file()
    annotations, categories = read_panoptic(tmp_path / "pred" / "panoptic.json")
    assert sorted(Path(a.file_name).name for a in annotations) == ["x.png", "y.png"]
    assert {c["id"] for c in categories.values()} == {c["id"] for c in CATEGORIES}
    assert all(a.ids.shape == (64, 64) for a in annotations)
    printed = run_cli("predict", tmp_path / "x.png", "--model", run, "--out", tmp_path / "pred_cli")
    assert "x.png:" in printed and (tmp_path / "pred_cli" / "panoptic" / "x.png").is_file()
