"""``pixelseg evaluate``'s report: report/index.html (self-contained) and report.md, per-image scores for the
best and worst images, the row-normalised confusion heatmap, and where the files go."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pixelseg.cli import app
from pixelseg.data.config import DataConfig
from pixelseg.data.shapes import SHAPES_CLASSES
from pixelseg.engine.config import Config, ModelConfig, OptimConfig, TrainConfig
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.report import ImageScore, PerImageScores, best_and_worst, row_normalised, slices_section
from pixelseg.engine.train import train
from pixelseg.io.render import draw_instances
from pixelseg.metrics import ConfusionMatrix


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    config = Config(
        model=ModelConfig(name="unet", kwargs={"padding": "same", "base_channels": 4, "batch_norm": True}),
        data=DataConfig(name="shapes", num_samples=16, val_samples=8, image_size=32, batch_size=8, val_batch_size=4),
        optim=OptimConfig(name="adamw", lr=3e-3), train=TrainConfig(epochs=1, out_dir=str(out), seed=0))
    return train(config, quiet=True)


@pytest.fixture(scope="module")
def scores(run_dir: Path) -> dict:
    return evaluate(run_dir, report=True, report_samples=3)


def test_report_is_written_into_the_run_folder_and_is_self_contained(run_dir: Path, scores: dict) -> None:
    page = run_dir / "report" / "index.html"
    assert scores["report"] == str(page)
    assert (run_dir / "report" / "report.md").is_file()
    text = page.read_text()
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", text)
    assert len(sources) >= 4  # confusion, best, worst, curves
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    markdown = (run_dir / "report" / "report.md").read_text()
    for name in SHAPES_CLASSES:
        assert f"<td>{name}</td>" in text and f"| {name} |" in markdown
    for picture in re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown):  # report.md's pictures lie beside it
        assert (run_dir / "report" / picture).is_file()


def test_the_confusion_heatmap_rows_sum_to_one(run_dir: Path, scores: dict) -> None:
    markdown = (run_dir / "report" / "report.md").read_text()
    section = markdown.split("## Confusion matrix")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| class")]
    assert [row.split("|")[1].strip() for row in rows] == SHAPES_CLASSES
    for row in rows:
        values = [float(v) for v in row.strip("| ").split("|")[1:] if v.strip() not in ("—", "")]
        if values:
            assert sum(values) == pytest.approx(1.0, abs=2e-3)


def test_row_normalised_divides_each_row_by_its_pixels() -> None:
    normalised = row_normalised(np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]]))
    np.testing.assert_allclose(normalised[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(normalised[2], [0.25, 0.25, 0.5])
    assert np.isnan(normalised[1]).all()  # a class without pixels has no distribution


def test_best_and_worst_in_the_report_are_ordered_by_their_iou(run_dir: Path, scores: dict) -> None:
    markdown = (run_dir / "report" / "report.md").read_text()
    best = [float(v) for v in re.findall(r"IoU ([0-9.]+)\)", markdown.split("## Best images")[1].split("##")[0])]
    worst = [float(v) for v in re.findall(r"IoU ([0-9.]+)\)", markdown.split("## Worst images")[1].split("##")[0])]
    assert len(best) == 3 and len(worst) == 3
    assert best == sorted(best, reverse=True) and worst == sorted(worst)
    assert min(best) >= max(worst)


def test_best_and_worst_pick_the_extremes_and_skip_unscored_images() -> None:
    records = [ImageScore(i, v) for i, v in enumerate([0.5, 0.9, math.nan, 0.1, 0.7, 0.3])]
    best, worst = best_and_worst(records, 2)
    assert [r.index for r in best] == [1, 4]
    assert [r.index for r in worst] == [3, 5]
    best, worst = best_and_worst(records[:3], 2)  # fewer images than asked: no image in both lists
    assert [r.index for r in best] == [1, 0] and worst == []


def test_per_image_scores_are_each_images_own_mean_iou() -> None:
    evaluator = ConfusionMatrix(3, ignore_index=255)
    recorder = PerImageScores(evaluator, [7, 3], 3, 255)
    target = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 255]]])
    prediction = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 0]]])
    recorder.update(prediction, target)
    # image 7: class 0 IoU 1/2, class 1 IoU 2/3; class 2 absent from both → mean over two classes
    # image 3: class 2 IoU 2/3, class 0 IoU 0/1 (the ignored pixel does not count)
    assert [r.index for r in recorder.records] == [7, 3]
    assert recorder.records[0].mean_iou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert recorder.records[1].mean_iou == pytest.approx((2 / 3 + 0) / 2)
    assert int(evaluator.matrix.sum()) == 7  # the wrapped evaluator saw the batch


def test_volumes_get_a_score_per_slice() -> None:
    recorder = PerImageScores(ConfusionMatrix(2, ignore_index=255), [0], 2, 255)
    target = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    target[0, 1] = 1
    prediction = target.clone()
    prediction[0, 2, :2] = 1  # slice 2: half the background predicted as class 1
    recorder.update(prediction, target)
    slices = recorder.records[0].slices
    assert slices[0] == pytest.approx(1.0) and slices[1] == pytest.approx(1.0)
    assert slices[2] == pytest.approx(0.25)  # background IoU 8/16, class 1 IoU 0/8
    section = slices_section(recorder.records)
    assert section is not None and "| 2 | 0.2500 |" in section.markdown


def test_the_cli_writes_the_report_where_asked_or_not_at_all(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(run_dir), "--report", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "index.html").is_file() and (tmp_path / "elsewhere" / "report.md").is_file()
    result = runner.invoke(app, ["evaluate", str(run_dir / "best"), "--no-report", "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "report" not in json.loads((tmp_path / "s.json").read_text())


def test_instance_drawings_carry_class_names_and_scores() -> None:
    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    masks = np.zeros((1, 60, 80), dtype=bool)
    masks[0, 30:50, 20:60] = True
    boxes = np.array([[20, 30, 60, 50]])
    plain = np.asarray(draw_instances(image, masks, boxes))
    labelled = np.asarray(draw_instances(image, masks, boxes, labels=["person 0.93"]))
    above = (slice(0, 30), slice(20, 80))  # the label sits above the box, where the plain drawing is grey
    assert (plain[above] == 128).all()
    assert (labelled[above] != 128).any(axis=-1).sum() > 50


@pytest.mark.slow
def test_under_torchrun_rank_0_writes_the_report_of_the_whole_split(run_dir: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pixelseg", "evaluate",
                             str(run_dir), "--report", str(tmp_path / "ddp")], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    listing = re.compile(r"#\d+ \(IoU [0-9.]+\)")
    evaluate(run_dir, report=tmp_path / "alone")
    alone = listing.findall((tmp_path / "alone" / "report.md").read_text())
    assert listing.findall((tmp_path / "ddp" / "report.md").read_text()) == alone  # both shards' images
