"""The classical CLI plugin: K sweeps write one overlay per K; bad arguments give one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pixelseg.cli.segment import register


@pytest.fixture
def app() -> typer.Typer:
    application = typer.Typer()
    register(application)
    return application


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    pixels = np.zeros((40, 48, 3), dtype=np.uint8)
    pixels[:, 24:] = [200, 60, 30]
    pixels[:, :24] = [30, 60, 200]
    pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def test_kmeans_sweep_writes_one_label_map_and_overlay_per_k(app: typer.Typer, image_file: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["kmeans", str(image_file), "--k", "4", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for k in (4, 8):
        labels = np.array(Image.open(out / f"scene_kmeans_k{k}_labels.png"))
        assert labels.shape == (40, 48) and labels.max() + 1 >= 2
        assert Image.open(out / f"scene_kmeans_k{k}_overlay.png").size == (48, 40)


@pytest.mark.parametrize("method", ["slic", "meanshift", "grabcut", "graphcut"])
def test_segment_runs_every_method(app: typer.Typer, image_file: Path, tmp_path: Path, method: str) -> None:
    scribbles = np.zeros((40, 48), dtype=np.uint8)
    scribbles[18:22, 34:40] = 1
    scribbles[18:22, 4:10] = 2
    scribble_file = tmp_path / "scribbles.png"
    Image.fromarray(scribbles).save(scribble_file)
    arguments = ["segment", str(image_file), "--method", method, "--out", str(tmp_path / "o"), "--k", "6",
                 "--scribbles", str(scribble_file)]
    if method == "grabcut":
        arguments = arguments[:-2] + ["--box", "20,0,48,40"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "o").glob("scene_*_labels.png"))
    assert len(written) == 1
    if method in ("graphcut", "grabcut"):
        mask = np.array(Image.open(written[0]))
        assert mask[:, 30:].mean() > 0.8 and mask[:, :20].mean() < 0.2


def test_bad_arguments_give_one_clear_line(app: typer.Typer, image_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["segment", str(image_file), "--method", "kmean", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown method 'kmean'" in unknown.output
    assert "did you mean 'kmeans'" in unknown.output
    zero = runner.invoke(app, ["kmeans", str(image_file), "--k", "0", "--out", str(tmp_path)])
    assert zero.exit_code == 2 and "K must be at least 1, got 0" in zero.output
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(small)
    wrong = runner.invoke(app, ["segment", str(image_file), "--method", "graphcut", "--scribbles", str(small),
                                "--out", str(tmp_path)])
    assert wrong.exit_code == 2
    assert f"{small}: scribbles are 5x5 but the image is 48x40" in wrong.output
    assert "Traceback" not in wrong.output
    box = runner.invoke(app, ["segment", str(image_file), "--method", "grabcut", "--box", "0,0,90,10",
                              "--out", str(tmp_path)])
    assert box.exit_code == 2 and "box (0, 0, 90, 10) is not inside the 48x40 image" in box.output
    missing = runner.invoke(app, ["segment", str(tmp_path / "nope.png"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "nope.png: no such image file" in missing.output


def test_a_bad_image_is_reported_and_the_others_are_still_segmented(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixelseg.cli import app

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "broken.png"), str(good), "--method", "slic",
                                      "--k", "4", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "broken.png" in result.output and "1 image(s) failed" in result.output
    assert (tmp_path / "out" / "good_slic_k4_labels.png").is_file()
