"""``pixelseg show``: a grid of dataset samples with their masks and a legend, optionally augmented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from pixelseg.cli import show
from pixelseg.data.config import DataConfig
from pixelseg.data.shapes import SHAPES_PALETTE
from pixelseg.engine.report import sample_grid
from pixelseg.errors import PixelsegError


def show_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that the command is called by its name as in the real app
        pass

    show.register(app)
    return app


def legend_colours(picture: np.ndarray, rows: int = 40) -> set[tuple[int, int, int]]:
    """The colours of the last ``rows`` rows (where the legend is)."""
    return {tuple(int(v) for v in c) for c in picture[-rows:].reshape(-1, 3)}


def test_show_writes_a_grid_with_a_legend_of_every_class(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(show_app(), ["show", "shapes", "--count", "3", "--out", str(out),
                                             "--set", "data.image_size=32", "--set", "data.num_samples=8"])
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 160 and picture.shape[1] > 3 * 160  # three cells of 160-pixel panels
    assert all(tuple(c) in legend_colours(picture) for c in SHAPES_PALETTE)  # one swatch per class


def test_show_reads_a_config_file_and_augments_only_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "shapes", "image_size": 32, "num_samples": 8,
                                               "hflip": True, "scale_range": [0.5, 0.6]}}))
    runner = CliRunner()
    for name, extra in (("plain.png", []), ("augmented.png", ["--augmented"])):
        result = runner.invoke(show_app(), ["show", str(config), "--count", "4", "--out", str(tmp_path / name),
                                            *extra])
        assert result.exit_code == 0, result.output
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    augmented = np.asarray(Image.open(tmp_path / "augmented.png"))
    assert plain.shape != augmented.shape or not np.array_equal(plain, augmented)


def test_augmented_samples_come_from_the_training_split_only() -> None:
    data = DataConfig(name="shapes", image_size=32, num_samples=8, val_samples=4)
    with pytest.raises(PixelsegError, match="augment"):
        sample_grid(data, split="val", augmented=True)
    assert sample_grid(data, split="val", count=2).width > 2 * 160


def test_instance_samples_are_drawn_with_their_class_names() -> None:
    data = DataConfig(name="synthetic_instances", image_size=64, num_samples=2, val_samples=2)
    picture = np.asarray(sample_grid(data, count=2).convert("RGB"))
    # the instance panel is the image plus coloured masks, boxes and name tags: far more colours than pure
    assert picture.shape[1] >= 4 * 160
    assert len(legend_colours(picture, rows=picture.shape[0])) > 50
