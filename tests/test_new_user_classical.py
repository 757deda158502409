"""Issue 19, interactive classical methods: GrabCut seeded and deterministic, the box convention (far corner
exclusive), graph cut from a box, per-image boxes and scribbles, --iterations, and k-means merged down to a
target number of regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pixelseg.classical.graphcut import BACKGROUND, FOREGROUND, box_mask, boykov_jolly, grabcut
from pixelseg.classical.kmeans import kmeans_segments
from pixelseg.cli.segment import register
from pixelseg.data.shapes import render_shapes
from pixelseg.errors import PixelsegError

# A cluttered image whose GrabCut result depends on OpenCV's random k-means start when unseeded.
SENSITIVE_IMAGE, SENSITIVE_BOX = 0, (0, 11, 96, 81)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def save(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def app() -> typer.Typer:
    application = typer.Typer()
    register(application)
    return application


def test_grabcut_gives_the_same_mask_whatever_grabcut_ran_before() -> None:
    image, _ = render_shapes(SENSITIVE_IMAGE, 96)
    other, _ = render_shapes(1, 96)
    first = grabcut(image, box=SENSITIVE_BOX, iterations=1)
    for _ in range(3):
        grabcut(other, box=(27, 0, 54, 24), iterations=1)  # moves OpenCV's global random generator
        assert np.array_equal(grabcut(image, box=SENSITIVE_BOX, iterations=1), first)


def test_grabcut_cli_gives_the_same_labels_whatever_ran_before(app: typer.Typer, tmp_path: Path) -> None:
    image = save(tmp_path / "a.png", render_shapes(SENSITIVE_IMAGE, 96)[0])
    other = save(tmp_path / "b.png", render_shapes(1, 96)[0])
    runner = CliRunner()
    arguments = ["segment", "--method", "grabcut", "--iterations", "1", "--box", "0,11,96,81"]
    for out, inputs in (("first", [image]), ("second", [other, image, other, image])):
        result = runner.invoke(app, [*arguments, *map(str, inputs), "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    first = np.array(Image.open(tmp_path / "first" / "a_grabcut_labels.png"))
    second = np.array(Image.open(tmp_path / "second" / "a_grabcut_labels.png"))
    assert np.array_equal(first, second)


def test_box_far_corner_is_exclusive() -> None:
    inside = box_mask((5, 6), (1, 2, 4, 5))
    assert inside.sum() == 3 * 3 and inside[2:5, 1:4].all()
    assert box_mask((5, 6), (0, 0, 6, 5)).all()  # 0,0,W,H is the whole image
    with pytest.raises(PixelsegError, match=r"box \(0, 0, 7, 5\) is not inside the 6x5 image"):
        box_mask((5, 6), (0, 0, 7, 5))


def stripe_image() -> np.ndarray:
    """40x40: blue, an orange object in columns 4..15, one green column 16 (a colour found nowhere else)."""
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 3))
    image[:] = [40, 80, 200]
    image[:, 4:16] = [220, 120, 40]
    image[:, 16] = [40, 220, 60]
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["grabcut", "graphcut"])
def test_the_column_at_x1_is_outside_the_box_and_x1_minus_1_inside(method: str) -> None:
    def segment(box: tuple[int, int, int, int]) -> np.ndarray:
        return grabcut(stripe_image(), box=box) if method == "grabcut" else \
            boykov_jolly(stripe_image(), box=box, iterations=3)

    mask = segment((0, 0, 16, 40))
    assert mask[:, 15].all()  # column x1 - 1: inside, foreground
    assert not mask[:, 16].any()  # column x1: outside, certain background
    assert segment((0, 0, 17, 40))[:, 16].all()  # the green column would be foreground inside a box


def two_halves(size: int = 40, seed: int = 0) -> np.ndarray:
    """Orange columns 0..size/2-1 on a blue background, with noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3))
    image[:] = [40, 80, 200]
    image[:, : size // 2] = [220, 120, 40]
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


def disk_image(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    truth = (rows - size / 2) ** 2 + (cols - size / 2.2) ** 2 < (size / 4) ** 2
    image = np.where(truth[..., None], [220, 120, 40], [40, 80, 200]).astype(np.float64)
    image += rng.normal(0, 30, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_graph_cut_starts_from_a_box_like_grabcut() -> None:
    image, truth = disk_image(4)
    mask = boykov_jolly(image, box=(8, 8, 56, 56), iterations=5)
    assert iou(mask, truth) > 0.9
    assert not mask[~box_mask(truth.shape, (8, 8, 56, 56))].any()
    seeds = np.zeros(truth.shape, dtype=np.uint8)
    seeds[30:34, 26:32] = BACKGROUND  # a scribble inside the box overrides it
    with_scribble = boykov_jolly(image, seeds, box=(8, 8, 56, 56))
    assert not with_scribble[30:34, 26:32].any() and with_scribble[20:24, 20:24].all()
    with pytest.raises(PixelsegError, match="a box over the whole image leaves no background"):
        boykov_jolly(image, box=(0, 0, 64, 64))


def test_iterations_are_checked_and_passed_on(app: typer.Typer, tmp_path: Path) -> None:
    image, _ = render_shapes(SENSITIVE_IMAGE, 96)
    path = save(tmp_path / "a.png", image)
    with pytest.raises(PixelsegError, match="iterations must be at least 1, got 0"):
        grabcut(image, box=SENSITIVE_BOX, iterations=0)
    one, five = grabcut(image, box=SENSITIVE_BOX, iterations=1), grabcut(image, box=SENSITIVE_BOX, iterations=5)
    assert not np.array_equal(one, five)
    for iterations, expected in (("1", one), ("5", five)):
        result = CliRunner().invoke(app, ["segment", str(path), "--method", "grabcut", "--box", "0,11,96,81",
                                          "--iterations", iterations, "--out", str(tmp_path / iterations)])
        assert result.exit_code == 0, result.output
        assert np.array_equal(np.array(Image.open(tmp_path / iterations / "a_grabcut_labels.png")), expected)
    bad = CliRunner().invoke(app, ["segment", str(path), "--method", "grabcut", "--box", "0,11,96,81",
                                   "--iterations", "0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--iterations must be at least 1, got 0" in bad.output


@pytest.fixture
def left_and_right(tmp_path: Path) -> tuple[Path, Path]:
    """Two images: the object on the left half of one and on the right half of the other."""
    left = two_halves(40, 1)
    return save(tmp_path / "left.png", left), save(tmp_path / "right.png", left[:, ::-1].copy())


@pytest.mark.parametrize("form", ["json", "csv"])
@pytest.mark.parametrize("method", ["grabcut", "graphcut"])
def test_per_image_boxes_from_a_file(app: typer.Typer, tmp_path: Path, left_and_right, form: str,
                                     method: str) -> None:
    if form == "json":
        boxes = tmp_path / "boxes.json"
        boxes.write_text(json.dumps({"left.png": [0, 0, 24, 40], "right": [16, 0, 40, 40]}))
    else:
        boxes = tmp_path / "boxes.csv"
        boxes.write_text("file_name,x0,y0,x1,y1\nleft.png,0,0,24,40\nright.png,16,0,40,40\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", *map(str, left_and_right), "--method", method,
                                      "--boxes", str(boxes), "--out", str(out)])
    assert result.exit_code == 0, result.output
    left = np.array(Image.open(out / f"left_{method}_labels.png")).astype(bool)
    right = np.array(Image.open(out / f"right_{method}_labels.png")).astype(bool)
    assert left[:, :18].mean() > 0.9 and not left[:, 24:].any()
    assert right[:, 22:].mean() > 0.9 and not right[:, :16].any()


def test_an_image_missing_from_the_box_file_is_named(app: typer.Typer, tmp_path: Path, left_and_right) -> None:
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"left.png": [0, 0, 24, 40]}))
    result = CliRunner().invoke(app, ["segment", *map(str, left_and_right), "--method", "grabcut",
                                      "--boxes", str(boxes), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{left_and_right[1]}: no box in --boxes and no scribbles in --scribbles-dir" in result.output
    boxes.write_text(json.dumps({"left.png": [0, 0, 24]}))
    short = CliRunner().invoke(app, ["segment", str(left_and_right[0]), "--method", "grabcut",
                                     "--boxes", str(boxes), "--out", str(tmp_path / "out")])
    assert short.exit_code == 2 and "the box of 'left.png' must be four integers" in short.output


def test_per_image_scribbles_from_a_folder(app: typer.Typer, tmp_path: Path, left_and_right) -> None:
    folder = tmp_path / "scribbles"
    folder.mkdir()
    for name, (object_columns, background_columns) in {"left": ((4, 8), (32, 36)),
                                                       "right": ((32, 36), (4, 8))}.items():
        seeds = np.zeros((40, 40), dtype=np.uint8)
        seeds[15:25, slice(*object_columns)] = FOREGROUND
        seeds[15:25, slice(*background_columns)] = BACKGROUND
        save(folder / f"{name}.png", seeds)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", *map(str, left_and_right), "--method", "graphcut",
                                      "--scribbles-dir", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    left = np.array(Image.open(out / "left_graphcut_labels.png")).astype(bool)
    right = np.array(Image.open(out / "right_graphcut_labels.png")).astype(bool)
    assert left[:, :18].mean() > 0.9 and left[:, 22:].mean() < 0.1
    assert right[:, 22:].mean() > 0.9 and right[:, :18].mean() < 0.1


def three_colour_image(seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=int)
    truth[: size // 2, size // 2:] = 1
    truth[size // 2:, size // 2:] = 2
    colours = np.array([[230, 40, 40], [40, 200, 60], [50, 60, 220]])
    return np.clip(colours[truth] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8), truth


def test_kmeans_gives_more_regions_than_k_and_merges_down_to_a_target() -> None:
    cluttered, _ = render_shapes(0, 64)
    assert kmeans_segments(cluttered, 10).max() + 1 > 10  # clusters are split into connected regions
    assert kmeans_segments(cluttered, 10, regions=10).max() + 1 == 10
    image, truth = three_colour_image(1)
    merged = kmeans_segments(image, 30, spatial_weight=1.0, regions=3)
    assert merged.max() + 1 == 3
    for region in range(3):  # each true region is one merged region, different regions different ones
        assert np.unique(merged[truth == region]).size == 1
    assert len({int(merged[truth == region][0]) for region in range(3)}) == 3
    assert kmeans_segments(image, 30, spatial_weight=1.0, regions=1).max() == 0


def test_kmeans_cli_says_clusters_are_split_and_merges_with_regions(app: typer.Typer, tmp_path: Path) -> None:
    path = save(tmp_path / "three.png", render_shapes(0, 64)[0])
    result = CliRunner().invoke(app, ["kmeans", str(path), "--k", "10", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "k-means clusters are split into connected regions; --regions N merges down to N" in result.output
    assert int(result.output.split("gave ")[1].split(" regions")[0]) > 10
    merged = CliRunner().invoke(app, ["segment", str(path), "--k", "10", "--regions", "3",
                                      "--out", str(tmp_path / "b")])
    assert merged.exit_code == 0, merged.output
    assert "K = 10 gave 3 regions" in merged.output
    assert np.array(Image.open(tmp_path / "b" / "three_kmeans_k10_labels.png")).max() == 2
