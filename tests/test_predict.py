"""``pixelseg predict`` backends and options: ONNX Runtime, speed-ups, tiling, streaming, TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

import pixelseg
from pixelseg import cli
from pixelseg.data.transforms import normalize, to_chw_uint8
from pixelseg.engine.predict import predict
from pixelseg.errors import PixelsegError
from pixelseg.inference.forward import forward_whole
from pixelseg.inference.runner import InferenceOptions, build_runner, logits_function
from pixelseg.inference.tta import tta_logits

PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]




def saved_model(directory: Path, name: str, in_channels: int, **kwargs) -> Path:
    """A saved model with the data section predict needs (classes, palette, normalisation)."""
    model = pixelseg.create_model(name, num_classes=3, in_channels=in_channels, **kwargs)
    model.pixelseg_config["data"] = {"classes": ["a", "b", "c"], "palette": PALETTE, "in_channels": in_channels,
                                     "image_mode": "L" if in_channels == 1 else "RGB", "ignore_index": 255,
                                     "mean": [0.5] * in_channels, "std": [0.25] * in_channels}
    return model.save_pretrained(directory)


def write_images(directory: Path, count: int, mode: str, size=(37, 45)) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if mode == "RGB" else size
    paths = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, shape, dtype=np.uint8)
        paths.append(directory / f"im{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def pixels_of(path: Path, mode: str) -> torch.Tensor:
    channels = 1 if mode == "L" else 3
    return normalize(to_chw_uint8(Image.open(path).convert(mode)).float() / 255, [0.5] * channels,
                     [0.25] * channels)[None]


MODELS = {
    "valid_unet": ("unet", 1, {"base_channels": 4, "depth": 2}),
    "deeplabv3plus": ("deeplabv3plus", 3, {"encoder": "test_resnet"}),
}


@pytest.mark.parametrize("key", sorted(MODELS))
def test_onnxruntime_backend_gives_eager_labels_and_logits_within_1e_4(key: str, tmp_path: Path) -> None:
    name, channels, kwargs = MODELS[key]
    model_dir = saved_model(tmp_path / "model", name, channels, **kwargs)
    mode = "L" if channels == 1 else "RGB"
    images = write_images(tmp_path / "in", 2, mode)
    model = pixelseg.from_pretrained(model_dir).eval()
    onnx_run = logits_function(build_runner(model, model_dir, InferenceOptions(backend="onnxruntime")),
                               InferenceOptions())
    with torch.inference_mode():
        for path in images:
            eager, onnx = forward_whole(model, pixels_of(path, mode)), onnx_run(pixels_of(path, mode))
            assert onnx.shape == eager.shape == (1, 3, 37, 45)
            assert torch.allclose(onnx, eager, atol=1e-4, rtol=0)
    for backend in ("torch", "onnxruntime"):
        result = CliRunner().invoke(cli.app, ["predict", str(tmp_path / "in"), "--model", str(model_dir),
                                              "--out", str(tmp_path / backend), "--backend", backend])
        assert result.exit_code == 0, result.output
    for path in images:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "torch" / f"{path.stem}.png")),
                                      np.asarray(Image.open(tmp_path / "onnxruntime" / f"{path.stem}.png")))


def test_tiled_optimised_and_whole_image_predictions_agree(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model", "unet", 1, base_channels=4, depth=2, batch_norm=True)
    write_images(tmp_path / "in", 2, "L", size=(70, 90))
    whole = predict(model_dir, tmp_path / "in", tmp_path / "whole")
    tiled = predict(model_dir, tmp_path / "in", tmp_path / "tiled", options=InferenceOptions(tile=20, tile_batch=3))
    fast = predict(model_dir, tmp_path / "in", tmp_path / "fast", options=InferenceOptions(optimize=True))
    assert len(whole.written) == len(tiled.written) == len(fast.written) == 4
    for name in ("im0.png", "im1.png"):
        reference = np.asarray(Image.open(tmp_path / "whole" / name))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tiled" / name)), reference)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "fast" / name)), reference)


def test_streamed_prediction_writes_the_same_labels_as_a_tiled_tiff(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model", "unet", 1, base_channels=4, depth=2)
    write_images(tmp_path / "in", 1, "L", size=(50, 70))
    predict(model_dir, tmp_path / "in", tmp_path / "png")
    result = CliRunner().invoke(cli.app, ["predict", str(tmp_path / "in"), "--model", str(model_dir), "--out",
                                          str(tmp_path / "tif"), "--stream", "--tile", "32"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "tif" / "im0.tif"),
                                  np.asarray(Image.open(tmp_path / "png" / "im0.png")))


def test_test_time_augmentation_options_call_tta_logits(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model", "deeplabv3plus", 3, encoder="test_resnet")
    (path,) = write_images(tmp_path / "in", 1, "RGB")
    result = CliRunner().invoke(cli.app, ["predict", str(tmp_path / "in"), "--model", str(model_dir), "--out",
                                          str(tmp_path / "out"), "--tta-scales", "0.75,1", "--tta-flip", "--tta-rotate"])
    assert result.exit_code == 0, result.output
    model = pixelseg.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        expected = tta_logits(model, pixels_of(path, "RGB"), (0.75, 1.0), flip=True, rotate=True).argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "im0.png")), expected)


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model", "unet", 1, base_channels=4, depth=2)
    write_images(tmp_path / "in", 1, "L")
    for options, message in ((InferenceOptions(backend="tensorrt"), "unknown backend 'tensorrt'"),
                             (InferenceOptions(backend="onnxruntime", optimize=True), "--optimize"),
                             (InferenceOptions(stream=True, tta_flip=True), "--stream"),
                             (InferenceOptions(stream=True, tta_rotate=True), "--stream")):
        with pytest.raises(PixelsegError, match=message):
            predict(model_dir, tmp_path / "in", tmp_path / "out", options=options)
