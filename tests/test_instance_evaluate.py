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

from pixelseg.data.instances import SyntheticInstances
from pixelseg.instance.evaluate import coco_metrics, detections_to_coco, ground_truth_coco
from pixelseg.instance.predict import draw_instances, instance_colours, predict_images


def perfect_detections(dataset, shift: int = 0) -> list[dict]:
    """The ground truth as detections (score 1), optionally shifted right by ``shift`` pixels."""
    results = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        masks = target["masks"]
        boxes = target["boxes"].clone()
        if shift:
            masks = torch.roll(masks, shift, dims=-1)
            boxes[:, 0::2] += shift
        output = {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"],
                  "masks": masks[:, None].float()}
        results.extend(detections_to_coco(output, int(target["image_id"]), dataset.category_ids))
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
    predict_images(FixedDetector(), [tmp_path / "a.png", tmp_path / "b.png"], out, score_threshold=0.5)
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
