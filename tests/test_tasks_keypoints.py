"""Keypoints through the one engine: synthetic triangles, Keypoint R-CNN, keypoint AP by OKS (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import run_cli, write_config
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pixelseg.data.build import build_data, task_of_dataset
from pixelseg.data.config import DataConfig
from pixelseg.data.keypoints import SyntheticKeypoints
from pixelseg.engine.config import load_config
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.predict import predict
from pixelseg.errors import PixelsegError
from pixelseg.metrics.keypoints import (
    COCO_KEYPOINT_NAMES,
    KeypointEvaluator,
    keypoint_sigmas,
)
from pixelseg.tasks import get_task

TINY_KEYPOINT_RCNN = {"backbone": "mobilenet_v3_large", "width_mult": 0.35, "fpn_channels": 16,
                      "keypoint_head_channels": 8, "keypoint_head_layers": 2, "min_size": 64, "max_size": 64,
                      "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_top_n_train": 64,
                      "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32}
TINY_CONFIG = {
    "task": "keypoints",
    "model": {"name": "keypoint_rcnn", "kwargs": TINY_KEYPOINT_RCNN},
    "data": {"name": "synthetic_keypoints", "num_samples": 8, "val_samples": 3, "image_size": 64, "batch_size": 2,
             "hflip": False},
    "loss": [],
    "optim": {"name": "adamw", "lr": 1e-3, "schedule": "step", "warmup_steps": 1, "grad_clip": 10.0},
    "train": {"steps": 2, "val_every_steps": 100, "checkpoint_every_steps": 1, "threads": 1,
              "precise_bn_batches": 2},
}
TRIANGLES = ["background", "triangle"]


def _targets(count: int = 4, size: int = 96) -> list[dict[str, torch.Tensor]]:
    return [SyntheticKeypoints(count, size=size, seed=3, split="val")[i][1] for i in range(count)]


def _as_detections(target: dict[str, torch.Tensor], shift: float = 0.0) -> dict[str, torch.Tensor]:
    keypoints = target["keypoints"].clone()
    keypoints[..., :2] += shift
    return {"boxes": target["boxes"], "labels": target["labels"], "keypoints": keypoints,
            "scores": torch.linspace(0.9, 0.5, len(target["labels"]))}


def _pycocotools_ap(targets: list[dict[str, torch.Tensor]], outputs: list[dict[str, torch.Tensor]]) -> list[float]:
    """Keypoint AP, AP50, AP75 straight from pycocotools, the COCO dictionaries written out here."""
    images, annotations, results = [], [], []
    for target, output in zip(targets, outputs, strict=True):
        image_id = int(target["image_id"])
        images.append({"id": image_id, "height": 96, "width": 96})
        for box, points in zip(target["boxes"].tolist(), target["keypoints"].tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": (box[2] - box[0]) * (box[3] - box[1]),
                                "keypoints": [v for p in points for v in p], "num_keypoints": 3})
        for score, points in zip(output["scores"].tolist(), output["keypoints"].tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": 1, "score": score,
                            "keypoints": [v for x, y, _ in points for v in (x, y, 1.0)]})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": 1, "name": "triangle", "keypoints": ["top", "left", "right"]}]}
        truth.createIndex()
        check = COCOeval(truth, truth.loadRes(results), "keypoints")
        check.params.kpt_oks_sigmas = np.array([0.025, 0.025, 0.025])
        check.evaluate()
        check.accumulate()
        check.summarize()
    return [float(v) for v in check.stats[:3]]


def _evaluate(targets: list[dict[str, torch.Tensor]], outputs: list[dict[str, torch.Tensor]]) -> dict:
    evaluator = KeypointEvaluator(TRIANGLES, [0, 1], ["top", "left", "right"])
    evaluator.update(outputs, targets, [(96, 96)] * len(targets))
    return evaluator.compute()


def test_ground_truth_as_detections_scores_keypoint_ap_one_like_pycocotools():
    targets = _targets()
    outputs = [_as_detections(t) for t in targets]
    scores = _evaluate(targets, outputs)
    assert [scores["keypoint_AP"], scores["keypoint_AP50"], scores["keypoint_AP75"]] == pytest.approx([1.0] * 3)
    assert [scores["keypoint_AP"], scores["keypoint_AP50"], scores["keypoint_AP75"]] == pytest.approx(
        _pycocotools_ap(targets, outputs), abs=1e-12)


def test_shifted_keypoints_score_lower_and_agree_with_pycocotools():
    targets = _targets()
    previous = 1.0
    for shift in (0.4, 0.7, 1.0, 1.5):  # x and y both shifted: sqrt(2) * shift pixels off
        outputs = [_as_detections(t, shift) for t in targets]
        scores = _evaluate(targets, outputs)
        figures = [scores["keypoint_AP"], scores["keypoint_AP50"], scores["keypoint_AP75"]]
        assert figures == pytest.approx(_pycocotools_ap(targets, outputs), abs=1e-12)
        assert scores["keypoint_AP"] < previous
        previous = scores["keypoint_AP"]
        if shift == 1.0:  # 1.4 px off on boxes of ~600-1000 px²: OKS above 0.5 (AP50 = 1), below 0.75
            assert scores["keypoint_AP50"] == 1.0 and scores["keypoint_AP75"] == 0.0
    assert previous == 0.0  # 2.1 px off: OKS below 0.5 everywhere with sigma 0.025


def test_no_detections_score_zero_and_the_report_names_the_sigmas():
    targets = _targets(2)
    evaluator = KeypointEvaluator(TRIANGLES, [0, 1], ["top", "left", "right"])
    evaluator.update([{k: v[:0] for k, v in _as_detections(t).items()} for t in targets], targets)
    assert evaluator.compute()["keypoint_AP"] == 0.0
    assert "top 0.025" in evaluator.report()


def test_oks_sigmas_are_cocos_for_coco_and_the_triangles_own_for_the_synthetic_set():
    assert keypoint_sigmas(COCO_KEYPOINT_NAMES) == tuple(COCOeval(iouType="keypoints").params.kpt_oks_sigmas)
    assert keypoint_sigmas(["top", "left", "right"]) == (0.025, 0.025, 0.025)
    with pytest.raises(PixelsegError, match="no OKS sigmas known"):
        keypoint_sigmas(["a", "b"])


def test_keypoints_outside_the_image_or_of_the_wrong_count_are_refused_in_one_line():
    target = _targets(1)[0]
    evaluator = KeypointEvaluator(TRIANGLES, [0, 1], ["top", "left", "right"])
    outside = {**target, "keypoints": target["keypoints"].clone()}
    outside["keypoints"][0, 1, 0] = 120.0
    with pytest.raises(PixelsegError, match=r"keypoint 1 of object 0 is at \(120.0, .*outside the 96x96 image"):
        evaluator.update([_as_detections(target)], [outside], [(96, 96)])
    two = {**target, "keypoints": target["keypoints"][:, :2]}
    with pytest.raises(PixelsegError, match=r"ground truth keypoints have shape \(\d+, 2, 3\), expected \(N, 3, 3\)"):
        evaluator.update([_as_detections(target)], [two], [(96, 96)])
    message = ""
    try:
        evaluator.update([_as_detections(two)], [target], [(96, 96)])
    except PixelsegError as error:
        message = str(error)
    assert "predicted keypoints" in message and "\n" not in message
    # training refuses them too, before torchvision would silently drop the point from the loss
    image = torch.zeros(3, 96, 96)
    model = SimpleNamespace(keypoint_names=["top", "left", "right"])
    with pytest.raises(PixelsegError, match="outside the 96x96 image"):
        get_task("keypoints").loss(model, ([image], [outside]), None, torch.device("cpu"))


def test_keypoint_data_builds_with_its_task():
    assert task_of_dataset("synthetic_keypoints") == "keypoints"
    with pytest.raises(PixelsegError, match="would swap its left and right keypoints"):
        build_data(DataConfig(name="synthetic_keypoints", num_samples=4, val_samples=2, image_size=64))
    bundle = build_data(DataConfig(name="synthetic_keypoints", num_samples=4, val_samples=2, image_size=64,
                                   hflip=False))
    assert bundle.kind == "keypoints" and bundle.collate is not None
    assert bundle.info.classes == TRIANGLES and bundle.info.keypoint_names == ["top", "left", "right"]
    images, targets = bundle.collate([bundle.val[0], bundle.val[1]])
    assert len(images) == 2 and targets[0]["keypoints"].shape[1:] == (3, 3)
    assert load_config(None, ["data.name=synthetic_keypoints"]).task == "keypoints"
    with pytest.raises(PixelsegError, match="task is 'instance' but data.name 'synthetic_keypoints' is a keypoints"):
        load_config(None, ["data.name=synthetic_keypoints", "task=instance"])
    with pytest.raises(PixelsegError, match="class statistics"):
        bundle.class_stats()


def test_keypoints_train_evaluate_and_predict_through_the_one_engine(tmp_path: Path):
    config = write_config(tmp_path, TINY_CONFIG, "keypoints")
    run_cli("train", config)
    run = tmp_path / "keypoints"
    for name in ("log.csv", "last.safetensors", "best/config.json", "best/model.safetensors"):
        assert (run / name).is_file(), name
    log = (run / "log.csv").read_text()
    assert "loss_keypoint" in log and "val_keypoint_AP" in log
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["task"] == "keypoints" and saved["name"] == "keypoint_rcnn"

    scores = evaluate(run, split="test")
    assert scores["task"] == "keypoints" and scores["images"] == 3
    for name in ("keypoint_AP", "keypoint_AP50", "keypoint_AP75"):
        assert 0.0 <= scores[name] <= 1.0
    printed = run_cli("evaluate", run, "--split", "test", "--no-report", "--out", tmp_path / "metrics.json")
    assert "keypoint_AP" in printed
    assert json.loads((tmp_path / "metrics.json").read_text())["keypoint_AP"] == pytest.approx(scores["keypoint_AP"])

    image, _ = SyntheticKeypoints(1, size=64, split="val")[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "x.png")
    report = predict(run, tmp_path / "x.png", tmp_path / "pred", score_threshold=0.0)
    assert not report.failed and (tmp_path / "pred" / "x_keypoints.png").is_file()
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert records and all(len(r["keypoints"]) == 9 and r["file_name"] == "x.png" for r in records)
    printed = run_cli("predict", tmp_path / "x.png", "--model", run, "--out", tmp_path / "pred_cli")
    assert "x.png:" in printed and (tmp_path / "pred_cli" / "x_keypoints.png").is_file()
