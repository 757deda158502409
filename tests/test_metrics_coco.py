"""COCO box/mask AP through pycocotools, and the prediction files (COCO JSON with RLE, overlays)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from pixelseg.data.build import DatasetInfo
from pixelseg.data.instances import SyntheticInstances
from pixelseg.io.render import draw_instances, instance_colours
from pixelseg.metrics import CocoEvaluator, Evaluator
from pixelseg.metrics.coco import coco_metrics, detections_to_coco, ground_truth_coco
from pixelseg.tasks.base import PredictOptions
from pixelseg.tasks.instance import InstancePredictor


def detector_output(target: dict, shift: int = 0, drop_last: bool = False) -> dict:
    """The ground truth of one image as a detector's output (score 1), optionally shifted right by
    ``shift`` pixels, optionally missing its last instance."""
    masks, boxes = target["masks"], target["boxes"].clone()
    if shift:
        masks = torch.roll(masks, shift, dims=-1)
        boxes[:, 0::2] += shift
    keep = slice(0, len(boxes) - 1) if drop_last else slice(None)
    return {"boxes": boxes[keep], "scores": torch.linspace(1.0, 0.5, len(boxes))[keep],
            "labels": target["labels"][keep], "masks": masks[keep, None].float()}


def perfect_detections(dataset, shift: int = 0) -> list[dict]:
    """The ground truth as COCO results, optionally shifted right by ``shift`` pixels."""
    results = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        results.extend(detections_to_coco(detector_output(target, shift), int(target["image_id"]),
                                           dataset.category_ids))
    return results


def test_ground_truth_as_detections_scores_ap_of_one_and_shifts_lower_it():
    dataset = SyntheticInstances(6, size=64)
    truth = ground_truth_coco(dataset)
    assert len(truth["images"]) == 6 and len(truth["categories"]) == 3
    perfect = coco_metrics(truth, perfect_detections(dataset))
    assert set(perfect) == {f"{kind}_{name}" for kind in ("box", "mask") for name in ("AP", "AP50", "AP75")}
    assert all(value == pytest.approx(1.0) for value in perfect.values())
    shifted = coco_metrics(truth, perfect_detections(dataset, shift=3))
    assert shifted["mask_AP"] < 0.9 and shifted["mask_AP50"] > shifted["mask_AP75"]
    assert coco_metrics(truth, [])["mask_AP50"] == 0.0


@pytest.mark.parametrize("shift", [0, 2])
def test_coco_evaluator_fed_batch_by_batch_equals_pycocotools_on_the_whole_set(shift: int):
    dataset = SyntheticInstances(7, size=48, seed=3)
    evaluator = CocoEvaluator(dataset.class_names, dataset.category_ids)
    assert isinstance(evaluator, Evaluator)
    results = []
    for start in range(0, len(dataset), 3):  # batches of 3, 3 and 1 images
        targets = [dataset[index][1] for index in range(start, min(start + 3, len(dataset)))]
        outputs = [detector_output(target, shift, drop_last=index % 2 == 1) for index, target in enumerate(targets)]
        evaluator.update(outputs, targets)
        for output, target in zip(outputs, targets, strict=True):
            results += detections_to_coco(output, int(target["image_id"]), dataset.category_ids)
    expected = coco_metrics(ground_truth_coco(dataset), results)
    scores = evaluator.compute()
    assert {name: scores[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    assert len(scores["mask_AP_per_class"]) == len(dataset.class_names) - 1
    report = evaluator.report(dataset.class_names)
    assert report.splitlines()[0] == "| class | box AP | mask AP |" and "background" not in report
    evaluator.reset()
    evaluator.update([detector_output(dataset[0][1])], [dataset[0][1]])
    evaluator.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
                       "masks": torch.zeros(0, 1, 48, 48)}], [dataset[1][1]])
    assert 0.0 < evaluator.compute()["mask_AP"] < 1.0


def test_coco_evaluator_with_no_detections_scores_zero():
    dataset = SyntheticInstances(2, size=32)
    evaluator = CocoEvaluator(dataset.class_names, dataset.category_ids)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 1, 32, 32)}
    evaluator.update([empty, empty], [dataset[0][1], dataset[1][1]])
    scores = evaluator.compute()
    assert all(scores[f"{kind}_{name}"] == 0.0 for kind in ("box", "mask") for name in ("AP", "AP50", "AP75"))


def _coco_case() -> tuple[list[dict], list[dict]]:
    dataset = SyntheticInstances(4, size=40, seed=5)
    targets = [dataset[index][1] for index in range(4)]
    return [detector_output(target, shift=index % 3) for index, target in enumerate(targets)], targets


def _gloo_coco_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    outputs, targets = _coco_case()
    evaluator = CocoEvaluator(SyntheticInstances.class_names, list(range(len(SyntheticInstances.class_names))))
    evaluator.update(outputs[rank::2], targets[rank::2])  # each process evaluates every other image
    evaluator.all_reduce()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(evaluator.compute()))
    dist.destroy_process_group()


def test_coco_evaluator_gathers_the_records_of_every_process(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.start_processes(_gloo_coco_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    outputs, targets = _coco_case()
    evaluator = CocoEvaluator(SyntheticInstances.class_names, list(range(len(SyntheticInstances.class_names))))
    evaluator.update(outputs, targets)
    expected = evaluator.compute()
    for rank in (0, 1):
        gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert gathered.keys() == expected.keys()
        assert all(gathered[key] == pytest.approx(expected[key], nan_ok=True) for key in expected)


def test_detections_are_rle_encoded_masks_at_the_threshold():
    masks = torch.zeros(1, 1, 10, 12)
    masks[0, 0, 2:5, 3:9] = 0.8
    masks[0, 0, 6, 6] = 0.4  # below the 0.5 threshold
    output = {"boxes": torch.tensor([[3.0, 2.0, 9.0, 5.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([2]), "masks": masks}
    (record,) = detections_to_coco(output, 5, [0, 11, 22])
    assert record["category_id"] == 22 and record["bbox"] == [3.0, 2.0, 6.0, 3.0]
    decoded = mask_utils.decode({"size": record["segmentation"]["size"],
                                 "counts": record["segmentation"]["counts"].encode()})
    assert decoded.sum() == 18 and decoded[2:5, 3:9].all()


class FixedDetector(nn.Module):
    """Stands in for a trained model: two fixed instances on any image."""

    pixelseg_config = {"class_names": ["background", "disc", "bar"], "category_ids": [0, 1, 2]}

    def forward(self, images):
        _, height, width = images[0].shape
        masks = torch.zeros(3, 1, height, width)
        masks[0, 0, 2:8, 2:8] = 1
        masks[1, 0, 10:14, 1:15] = 1
        masks[2, 0, 0:3, 0:3] = 1
        return [{"boxes": torch.tensor([[2.0, 2, 8, 8], [1, 10, 15, 14], [0, 0, 3, 3]]),
                 "scores": torch.tensor([0.9, 0.7, 0.2]), "labels": torch.tensor([1, 2, 1]), "masks": masks}]


def test_predictions_are_coco_json_with_rle_and_one_colour_per_instance(tmp_path: Path):
    for name in ("a", "b"):
        Image.new("RGB", (16, 16), (0, 0, 0)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    info = DatasetInfo(classes=["background", "disc", "bar"], palette=[[0, 0, 0]] * 3, in_channels=3,
                       image_mode="RGB", ignore_index=255, mean=[0.0] * 3, std=[1.0] * 3, category_ids=[0, 1, 2])
    predictor = InstancePredictor(FixedDetector(), info, PredictOptions(score_threshold=0.5))
    out.mkdir()
    for name in ("a", "b"):
        predictor.predict_file(tmp_path / f"{name}.png", out)
    predictor.finish(out)
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 4  # the 0.2-score instance is dropped on both images
    assert {r["category_name"] for r in results} == {"disc", "bar"}
    first = results[0]
    assert first["file_name"] == "a.png" and first["bbox"] == [2.0, 2.0, 6.0, 6.0]
    decoded = mask_utils.decode({"size": first["segmentation"]["size"],
                                 "counts": first["segmentation"]["counts"].encode()})
    assert decoded.shape == (16, 16) and decoded.sum() == 36
    overlay = np.asarray(Image.open(out / "a_instances.png"))
    colours = instance_colours(2)
    assert colours[0] != colours[1]
    inside_first, inside_second = overlay[4, 4], overlay[12, 8]
    assert tuple(inside_first) != tuple(inside_second)
    assert tuple(overlay[15, 15]) == (0, 0, 0)  # background untouched
    assert [i["file_name"] for i in json.loads((out / "images.json").read_text())] == ["a.png", "b.png"]


def test_overlay_blends_each_instance_with_its_own_colour():
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, :4], masks[1, 4:] = True, True
    overlay = np.asarray(draw_instances(image, masks, np.array([[0, 0, 7, 3], [0, 4, 7, 7]])))
    for k, row in ((0, 1), (1, 6)):
        expected = (0.5 * 100 + 0.5 * np.asarray(instance_colours(2)[k])).astype(np.uint8)
        assert np.abs(overlay[row, 3].astype(int) - expected).max() <= 1


def test_coco_sample_ground_truth_round_trips_with_original_category_ids(coco_sample_root: Path):
    from pixelseg.data.instances import CocoInstances

    dataset = CocoInstances(coco_sample_root / "panoptic_coco_detection_format.json",
                            coco_sample_root / "input_images")
    truth = ground_truth_coco(dataset)
    source = json.loads((coco_sample_root / "panoptic_coco_detection_format.json").read_text())
    used = {a["category_id"] for a in source["annotations"] if not a["iscrowd"]}
    assert {a["category_id"] for a in truth["annotations"]} == used
    metrics = coco_metrics(truth, perfect_detections(dataset))
    assert metrics["mask_AP"] == pytest.approx(1.0) and metrics["box_AP"] == pytest.approx(1.0)
