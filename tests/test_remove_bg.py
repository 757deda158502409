"""``pixelseg remove-bg``: RGBA cut-outs from a saved model or GrabCut from a box, and ``POST /v1/remove-bg``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import pixelseg
from pixelseg.cli import remove_bg
from pixelseg.data.transforms import normalize, to_chw_uint8
from pixelseg.inference.forward import forward_whole

WEIZMANN = Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann_horse"
MEAN, STD = [0.5] * 3, [0.25] * 3


def cli() -> typer.Typer:
    """A fresh app holding only ``remove-bg`` (``pixelseg.cli`` registers it on the real one)."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    remove_bg.register(app)
    return app


def run(*args: str):
    return CliRunner().invoke(cli(), ["remove-bg", *args])


def saved_model(directory: Path, classes: list[str]) -> Path:
    """A tiny random U-Net whose classes all occur on a random photo (a fresh one predicts one class
    everywhere): its classifier rows are spread apart and their biases centred on such a photo."""
    torch.manual_seed(0)
    model = pixelseg.create_model("unet", num_classes=len(classes), in_channels=3, base_channels=4, depth=2,
                                  padding="same").eval()
    head = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)][-1]
    probe = torch.rand(1, 3, 64, 64) * 4 - 2
    with torch.no_grad():
        head.weight.add_(10 * torch.randn_like(head.weight))
        scores = forward_whole(model, probe)[0]
        head.bias.sub_(scores.flatten(1).median(dim=1).values)
    palette = [[i * 40, 255 - i * 40, 0] for i in range(len(classes))]
    model.pixelseg_config["data"] = {"classes": classes, "palette": palette, "in_channels": 3, "image_mode": "RGB",
                                     "ignore_index": 255, "mean": MEAN, "std": STD}
    return model.save_pretrained(directory)


def model_labels(model_dir: Path, image: Image.Image) -> np.ndarray:
    """The model's argmax straight from its forward pass."""
    model = pixelseg.from_pretrained(model_dir).eval()
    pixels = normalize(to_chw_uint8(image.convert("RGB")).float() / 255.0, MEAN, STD)
    with torch.inference_mode():
        return forward_whole(model, pixels[None]).argmax(1)[0].numpy()


def photo(path: Path, width: int = 48, height: int = 40, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_model(tmp_path_factory.mktemp("binary") / "model", ["background", "thing"])


def read_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        return np.asarray(image)


def test_cutout_alpha_is_the_models_foreground_class_and_the_photo_is_kept(binary_model: Path,
                                                                             tmp_path: Path) -> None:
    source = photo(tmp_path / "a.png")
    result = run(str(source), "--model", str(binary_model), "--out", str(tmp_path / "out"), "--refine", "none",
                 "--alpha-png")
    assert result.exit_code == 0, result.output
    cut = read_rgba(tmp_path / "out" / "a.png")
    image = Image.open(source)
    labels = model_labels(binary_model, image)
    assert 0 < (labels == 1).mean() < 1  # the random model gives both classes: the check means something
    np.testing.assert_array_equal(cut[..., 3], np.where(labels == 1, 255, 0))
    np.testing.assert_array_equal(cut[..., :3], np.asarray(image))
    matte = np.asarray(Image.open(tmp_path / "out" / "a_alpha.png"))
    np.testing.assert_array_equal(matte, cut[..., 3])


def test_default_refinement_softens_only_the_edge(binary_model: Path, tmp_path: Path) -> None:
    source = photo(tmp_path / "a.png", 96, 80)
    assert run(str(source), "--model", str(binary_model), "--out", str(tmp_path / "out"), "--band", "2").exit_code == 0
    alpha = read_rgba(tmp_path / "out" / "a.png")[..., 3]
    hard = model_labels(binary_model, Image.open(source)) == 1
    from pixelseg.refiners.matting import trimap_from_mask

    certain = trimap_from_mask(hard, 2) != 128
    np.testing.assert_array_equal(alpha[certain], np.where(hard, 255, 0)[certain])
    assert ((alpha > 0) & (alpha < 255)).any()


def test_class_picks_the_foreground_of_a_multiclass_model(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model", ["sky", "road", "car"])
    source = photo(tmp_path / "a.png", seed=3)
    result = run(str(source), "--model", str(model_dir), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "pick one with --class" in result.output
    assert run(str(source), "--model", str(model_dir), "--class", "road", "--refine", "none",
               "--out", str(tmp_path / "out")).exit_code == 0
    labels = model_labels(model_dir, Image.open(source))
    np.testing.assert_array_equal(read_rgba(tmp_path / "out" / "a.png")[..., 3], np.where(labels == 1, 255, 0))
    result = run(str(source), "--model", str(model_dir), "--class", "boat", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no class 'boat'" in result.output


def square_photo(path: Path, size: tuple[int, int] = (80, 60), exif_orientation: int | None = None) -> Path:
    """A bright square (columns 20..49, rows 15..39) on a dark noisy background."""
    width, height = size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    pixels[15:40, 20:50] = rng.integers(200, 256, (25, 30, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif, quality=95)
    return path


def test_box_is_x_y_w_h_and_grabcut_finds_the_square(tmp_path: Path) -> None:
    source = square_photo(tmp_path / "s.png")
    result = run(str(source), "--box", "15,10,40,35", "--out", str(tmp_path / "out"), "--refine", "none")
    assert result.exit_code == 0, result.output
    alpha = read_rgba(tmp_path / "out" / "s.png")[..., 3] > 127
    truth = np.zeros_like(alpha)
    truth[15:40, 20:50] = True
    assert (alpha & truth).sum() / (alpha | truth).sum() > 0.9
    # the same numbers read as x0,y0,x1,y1 would be a 25x25 box that cuts the square
    result = run(str(source), "--box", "70,10,20,35", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "x,y,w,h" in result.output and "80x60" in result.output


def test_exif_orientation_is_honoured_and_the_size_kept(tmp_path: Path) -> None:
    source = square_photo(tmp_path / "turned.jpg", exif_orientation=6)  # stored 80x60, shown 60x80
    assert run(str(source), "--box", "1,1,58,78", "--out", str(tmp_path / "out")).exit_code == 0
    cut = read_rgba(tmp_path / "out" / "turned.png")
    assert cut.shape == (80, 60, 4)
    with Image.open(source) as image:
        from PIL import ImageOps

        np.testing.assert_array_equal(cut[..., :3], np.asarray(ImageOps.exif_transpose(image).convert("RGB")))


def test_a_bad_photo_is_one_line_and_the_others_are_written(binary_model: Path, tmp_path: Path) -> None:
    good = photo(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = run(str(broken), str(good), "--model", str(binary_model), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "broken.png" in result.output and "Traceback" not in result.output
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "broken.png").exists()


def test_folder_input_and_option_errors(binary_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(2):
        photo(folder / f"p{index}.png", seed=index)
    assert run(str(folder), "--model", str(binary_model), "--out", str(tmp_path / "out")).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png"]
    for args, message in ((["--out", "x"], "either --model"),
                          (["--model", str(binary_model), "--box", "1,1,2,2", "--out", "x"], "either --model"),
                          (["--box", "1,1,2", "--out", "x"], "x,y,w,h"),
                          (["--box", "1,1,5,5", "--refine", "poisson", "--out", "x"], "--refine")):
        result = run(str(folder), *args)
        assert result.exit_code == 2 and message in result.output, result.output


def test_large_photo_goes_through_the_tiled_path_and_keeps_its_size(binary_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelseg.tasks.semantic import ImagePredictor

    monkeypatch.setattr(remove_bg, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(remove_bg, "AUTO_TILE", 64)
    tiles: list[int | None] = []
    labels = ImagePredictor.labels

    def spy(self, image, source=None):
        tiles.append(self.inference.tile)
        return labels(self, image, source)

    monkeypatch.setattr(ImagePredictor, "labels", spy)
    small, large = photo(tmp_path / "small.png", 90, 90), photo(tmp_path / "large.png", 230, 170, seed=1)
    assert run(str(small), str(large), "--model", str(binary_model), "--out", str(tmp_path / "out")).exit_code == 0
    assert tiles == [None, 64]
    assert read_rgba(tmp_path / "out" / "large.png").shape == (170, 230, 4)


@pytest.mark.skipif(not (WEIZMANN / "figure_ground").is_dir(), reason=f"no Weizmann horses at {WEIZMANN}")
def test_grabcut_box_cutouts_of_real_horses_match_their_masks(tmp_path: Path) -> None:
    from pixelseg.data.weizmann import WeizmannHorse

    dataset = WeizmannHorse(WEIZMANN, "test")
    ious = []
    for index in range(4):
        name = tmp_path / f"horse{index}.png"
        dataset.read_sample_image(index).save(name)
        truth = dataset.read_label(index).astype(bool)
        rows, cols = np.nonzero(truth)
        box = f"{cols.min()},{rows.min()},{cols.max() - cols.min() + 1},{rows.max() - rows.min() + 1}"
        result = run(str(name), "--box", box, "--refine", "none", "--out", str(tmp_path / "out"))
        assert result.exit_code == 0, result.output
        alpha = read_rgba(tmp_path / "out" / name.name)[..., 3] >= 128
        assert alpha.shape == truth.shape
        ious.append((alpha & truth).sum() / (alpha | truth).sum())
    # benchmarks/remove_bg.py: GrabCut from the mask's box gives a mean IoU of 0.69 over the 100 test photos
    assert np.mean(ious) > 0.65, ious


def test_served_remove_bg_answers_the_commands_rgba(binary_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="pixelseg serve needs the serve extra (fastapi)")
    pytest.importorskip("httpx", reason="the API tests drive the app with httpx")
    from fastapi.testclient import TestClient

    from pixelseg.serve.app import create_app

    source = photo(tmp_path / "a.png", 64, 48)
    assert run(str(source), "--model", str(binary_model), "--out", str(tmp_path / "out")).exit_code == 0
    with TestClient(create_app(binary_model)) as client:
        answer = client.post("/v1/remove-bg", files={"image": ("a.png", source.read_bytes(), "image/png")})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        served = np.asarray(Image.open(io.BytesIO(answer.content)))
        np.testing.assert_array_equal(served, read_rgba(tmp_path / "out" / "a.png"))
        none = client.post("/v1/remove-bg?refine=none", files={"image": ("a.png", source.read_bytes(), "image/png")})
        labels = model_labels(binary_model, Image.open(source))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(none.content)))[..., 3],
                                      np.where(labels == 1, 255, 0))
        wrong = client.post("/v1/remove-bg?class=boat", files={"image": ("a.png", source.read_bytes(), "image/png")})
        assert wrong.status_code == 400 and "no class 'boat'" in wrong.json()["detail"]
        junk = client.post("/v1/remove-bg", files={"image": ("a.png", b"junk", "image/png")})
        assert junk.status_code == 415


def test_model_side_runs_the_model_at_its_scale_and_the_mask_returns_to_the_photo_size(binary_model: Path,
                                                                                       tmp_path: Path) -> None:
    source = photo(tmp_path / "big.png", 200, 160)
    result = run(str(source), "--model", str(binary_model), "--model-side", "50", "--refine", "none",
                 "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    alpha = read_rgba(tmp_path / "out" / "big.png")[..., 3]
    assert alpha.shape == (160, 200)
    small = Image.open(source).convert("RGB").resize((50, 40), Image.Resampling.BILINEAR)
    expected = Image.fromarray(model_labels(binary_model, small) == 1).resize((200, 160), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(alpha, np.where(np.asarray(expected), 255, 0))
