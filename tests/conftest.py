"""Shared fixtures: the real datasets in ../shared/data (tests skip cleanly when absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    """Seed 0 and one intra-op thread for every test (restored after it): pytest-xdist runs one worker per
    core, and on a shared CPU OpenMP threads competing for cores make small ops many times slower."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_dataset(name: str) -> Path:
    """Path of ``../shared/data/<name>``, or skip the test when it is not there."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture
def camvid_root() -> Path:
    return shared_dataset("camvid")


@pytest.fixture
def isbi_root() -> Path:
    return shared_dataset("isbi2012")


@pytest.fixture
def coco_sample_root() -> Path:
    return shared_dataset("coco_panoptic_sample")
