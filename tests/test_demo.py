"""``pixelseg demo`` (``make demo``): a picture from the classical methods within seconds, then training,
the report and one readable result picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from pixelseg.engine.demo import classical_stage, run_demo


def test_the_quick_stage_writes_its_picture_without_training(tmp_path: Path) -> None:
    path = classical_stage(tmp_path, size=64)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert path == tmp_path / "classical.png"
    assert picture.shape[1] >= 5 * 256  # five panels, enlarged to a readable size
    assert not (tmp_path / "run").exists()


def test_a_tiny_demo_ends_with_a_result_picture_and_the_report(tmp_path: Path) -> None:
    scores = run_demo(tmp_path, epochs=1, samples=8, image_size=32, console=Console(quiet=True))
    for name in ("classical.png", "result.png", "run/report/index.html", "run/report/report.md"):
        assert (tmp_path / name).is_file(), name
    assert scores["report"] == str(tmp_path / "run" / "report" / "index.html")
    result = Image.open(tmp_path / "result.png")
    assert result.width >= 3 * 288 and result.height >= 4 * 288  # four rows of three 288-pixel panels
