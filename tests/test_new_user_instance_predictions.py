"""Issue 19: instance predictions of several ``predict`` calls into one folder are merged, not overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from pixelseg.data.build import DatasetInfo
from pixelseg.errors import PixelsegError
from pixelseg.tasks.base import PredictOptions
from pixelseg.tasks.instance import InstancePredictor


class OneBoxPerImage(nn.Module):
    """A stand-in detector: one object per image, its box as wide as the image's red value says."""

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        outputs = []
        for image in images:
            height, width = image.shape[-2:]
            right = max(2, round(float(image[0, 0, 0]) * 255) // 10)
            masks = torch.zeros(1, 1, height, width)
            masks[..., :4, :right] = 1.0
            outputs.append({"boxes": torch.tensor([[0.0, 0.0, float(right), 4.0]]), "scores": torch.tensor([0.9]),
                            "labels": torch.tensor([1]), "masks": masks})
        return outputs


def predict_call(out: Path, *images: Path) -> None:
    """What one ``pixelseg predict`` call does: predict each image, then finish."""
    info = DatasetInfo(classes=["background", "cell"], palette=[[0, 0, 0], [255, 0, 0]], in_channels=3,
                       image_mode="RGB", ignore_index=255, mean=[0.0] * 3, std=[1.0] * 3, category_ids=[0, 7])
    predictor = InstancePredictor(OneBoxPerImage(), info, PredictOptions())
    out.mkdir(exist_ok=True)
    for image in images:
        predictor.predict_file(image, out)
    predictor.finish(out)


def image_file(folder: Path, name: str, red: int) -> Path:
    path = folder / name
    Image.new("RGB", (32, 16), (red, 0, 0)).save(path)
    return path


def read(out: Path) -> tuple[list[dict], list[dict]]:
    return json.loads((out / "predictions.json").read_text()), json.loads((out / "images.json").read_text())


def test_a_second_call_adds_to_the_first_calls_predictions(tmp_path: Path) -> None:
    a, b, c = (image_file(tmp_path, f"{n}.png", red) for n, red in (("a", 100), ("b", 150), ("c", 200)))
    out = tmp_path / "out"
    predict_call(out, a, b)
    predict_call(out, c)
    predictions, images = read(out)
    assert [(i["id"], i["file_name"]) for i in images] == [(0, "a.png"), (1, "b.png"), (2, "c.png")]
    assert [(p["image_id"], p["file_name"], p["bbox"][2]) for p in predictions] == \
        [(0, "a.png", 10), (1, "b.png", 15), (2, "c.png", 20)]
    assert {p["category_id"] for p in predictions} == {7}


def test_an_image_predicted_again_replaces_its_old_records_and_keeps_its_id(tmp_path: Path) -> None:
    a, b = image_file(tmp_path, "a.png", 100), image_file(tmp_path, "b.png", 150)
    out = tmp_path / "out"
    predict_call(out, a, b)
    image_file(tmp_path, "a.png", 250)  # a changed a.png, predicted again
    predict_call(out, a)
    predictions, images = read(out)
    assert [(i["id"], i["file_name"]) for i in images] == [(0, "a.png"), (1, "b.png")]
    assert sorted((p["image_id"], p["bbox"][2]) for p in predictions) == [(0, 25), (1, 15)]


def test_a_foreign_predictions_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("{not json")
    with pytest.raises(PixelsegError, match="predictions.json: cannot add to this file, it is not valid JSON"):
        predict_call(out, image_file(tmp_path, "a.png", 100))
    assert (out / "predictions.json").read_text() == "{not json"
