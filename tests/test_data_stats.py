"""Class frequencies and class weights (median frequency, ENet) and the ``pixelseg stats`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pixelseg.cli import app
from pixelseg.data.shapes import Shapes
from pixelseg.data.stats import count_classes, enet_weights, median_frequency_weights

runner = CliRunner()


def test_median_frequency_worked_example() -> None:
    # Image A: 0 0 0 1 — image B: 0 0 2 2 and two ignored pixels.
    masks = [np.array([[0, 0], [0, 1]]), np.array([[0, 0, 255], [2, 2, 255]])]
    pixels, image_pixels, images = count_classes(masks, 3, ignore_index=255)
    assert images == 2
    assert pixels.tolist() == [5, 1, 2]
    assert image_pixels.tolist() == [8, 4, 4]  # counted pixels of the images where the class occurs
    # f = 5/8, 1/4, 2/4; median 1/2 → weights 0.8, 2, 1
    np.testing.assert_allclose(median_frequency_weights(pixels, image_pixels), [0.8, 2.0, 1.0])
    # ENet: p = 5/8, 1/8, 2/8 → 1 / ln(1.02 + p)
    np.testing.assert_allclose(enet_weights(pixels), [1 / math.log(1.02 + p) for p in (5 / 8, 1 / 8, 2 / 8)])


def test_a_class_that_never_occurs() -> None:
    pixels, image_pixels, _ = count_classes([np.array([0, 0, 1])], 3)
    assert median_frequency_weights(pixels, image_pixels)[2] == 0
    assert enet_weights(pixels)[2] == pytest.approx(1 / math.log(1.02))  # ENet's upper bound, about 50.5
    assert (enet_weights(pixels) >= 1).all()


def test_labels_outside_the_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        count_classes([np.array([0, 7])], 3)


def test_stats_command_on_shapes_counts_like_numpy() -> None:
    result = runner.invoke(app, ["stats", "shapes", "--set", "data.num_samples=3", "--set", "data.image_size=32",
                                 "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    data = Shapes(3, size=32, split="train")
    counts = sum(np.bincount(data.load(i)[1].ravel(), minlength=4) for i in range(3))
    assert printed["pixels"] == counts.tolist()
    assert printed["classes"] == ["background", "circle", "square", "triangle"]
    np.testing.assert_allclose(printed["enet"], 1 / np.log(1.02 + counts / counts.sum()))


def test_stats_command_on_camvid_reads_the_label_pngs(camvid_root: Path) -> None:
    result = runner.invoke(app, ["stats", "camvid", "--root", str(camvid_root), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "median_frequency:" in result.stdout and "pole" in result.stdout
    result = runner.invoke(app, ["stats", "camvid", "--root", str(camvid_root), "--limit", "3", "--json"])
    printed = json.loads(result.stdout)
    pixels = np.zeros(11, dtype=np.int64)
    image_pixels = np.zeros(11, dtype=np.int64)
    for name in sorted((camvid_root / "trainannot").glob("*.png"))[:3]:
        label = np.array(Image.open(name)).ravel()
        label = label[label != 11]  # void
        present = np.unique(label)
        pixels += np.bincount(label, minlength=11)
        image_pixels[present] += label.size
    assert printed["pixels"] == pixels.tolist()
    frequency = np.where(pixels > 0, pixels / np.maximum(image_pixels, 1), np.nan)
    expected = np.where(pixels > 0, np.nanmedian(frequency) / frequency, 0.0)
    np.testing.assert_allclose(printed["median_frequency"], expected)


def test_stats_command_bad_input_is_one_line() -> None:
    result = runner.invoke(app, ["stats", "shapez"])
    assert result.exit_code == 2
    assert "did you mean 'shapes'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["stats", "missing.yaml"])
    assert result.exit_code == 2 and "missing.yaml" in result.output
