"""``torchrun --nproc-per-node 2 -m pixelseg predict``: two CPU processes on loopback share a folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict import saved_model, write_images

from pixelseg.engine.predict import shard_from_env
from pixelseg.errors import PixelsegError

TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_shard_comes_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard_from_env() == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(PixelsegError, match="RANK 3"):
        shard_from_env()


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_two_processes_write_every_output_once_and_report_the_failed_image(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model", "unet", 1, base_channels=4, depth=2)
    images = write_images(tmp_path / "in", 7, "L", size=(24, 28))
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")  # sorted first: rank 0's share
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "COLUMNS": "200"}
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "pixelseg", "predict",
         str(tmp_path / "in"), "--model", str(model_dir), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output  # a failed image makes the run fail ...
    assert re.search(r"error: rank 0: \S*broken\.png", output), output  # ... reported by its rank
    counts = {int(rank): int(n) for rank, n in re.findall(r"rank (\d): (\d+) images segmented", output)}
    assert counts == {0: 3, 1: 4}, output  # broken, im1, im3, im5 | im0, im2, im4, im6
    expected = sorted([f"{p.stem}.png" for p in images] + [f"{p.stem}_overlay.png" for p in images])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == expected  # none missed, none extra
    assert output.count("input(s) failed") == 2  # both ranks finished, then both report the total
