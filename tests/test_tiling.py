"""Overlap-tile, sliding-window and streamed inference against whole-image inference and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import sliding_window_inference
from PIL import Image
from torch import nn

import pixelseg
from pixelseg.errors import PixelsegError
from pixelseg.inference.forward import forward_whole
from pixelseg.inference.tiling import (
    blend_window,
    class_map,
    has_valid_convolutions,
    overlap_tile_logits,
    sliding_window_logits,
    stream_predict,
    valid_geometry,
    window_spans,
)


def small_valid_unet(in_channels: int = 1) -> nn.Module:
    return pixelseg.create_model("unet", num_classes=3, in_channels=in_channels, base_channels=4, depth=3).eval()


def three_convs() -> nn.Module:
    """Zero-padded 3x3 convolutions, no pooling: receptive-field radius 3, stride 1."""
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, padding=1)).eval()


def test_valid_geometry_of_the_paper_unet_is_572_in_388_out() -> None:
    model = pixelseg.create_model("unet", num_classes=2, in_channels=1)
    geometry = valid_geometry(model, 388)
    assert (geometry.input_side, geometry.output_side, geometry.margin, geometry.stride) == (572, 388, 92, 16)
    assert has_valid_convolutions(model)
    assert not has_valid_convolutions(pixelseg.create_model("unet", num_classes=2, padding="same", depth=2))


@torch.inference_mode()
def test_overlap_tile_equals_whole_image_inference_for_a_valid_unet() -> None:
    model = small_valid_unet()
    images = torch.randn(2, 1, 61, 83)
    whole = forward_whole(model, images)
    for tile, batch in ((20, 3), (44, 1)):
        tiled = overlap_tile_logits(model, images, tile=tile, batch=batch)
        assert tiled.shape == whole.shape
        assert torch.allclose(tiled, whole, atol=1e-6, rtol=0)
        assert torch.equal(tiled.argmax(1), whole.argmax(1))


def test_window_spans_cover_the_axis_and_end_at_the_border() -> None:
    assert window_spans(100, 32, 8) == [(0, 32), (24, 56), (48, 80), (68, 100)]
    assert window_spans(100, 32, 8, align=8) == [(0, 32), (24, 56), (48, 80), (64, 100)]
    assert window_spans(20, 32, 8) == [(0, 20)]


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
@torch.inference_mode()
def test_sliding_window_blending_matches_monai(blend: str) -> None:
    net, images = three_convs(), torch.randn(2, 2, 70, 90)
    ours = sliding_window_logits(net, images, tile=32, overlap=8, batch=3, blend=blend)
    reference = sliding_window_inference(images, (32, 32), 3, net, overlap=0.25,
                                         roi_weight_map=blend_window(32, 32, blend))
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)


@torch.inference_mode()
def test_blending_a_pointwise_network_gives_the_whole_image_result() -> None:
    net, images = nn.Conv2d(2, 3, 1).eval(), torch.randn(1, 2, 45, 77)
    for blend in ("gaussian", "cosine"):
        tiled = sliding_window_logits(net, images, tile=16, overlap=6, batch=5, blend=blend)
        assert torch.allclose(tiled, net(images), atol=1e-5, rtol=0)


@torch.inference_mode()
def test_exact_mode_equals_whole_image_when_the_receptive_field_fits_in_the_overlap() -> None:
    net, images = three_convs(), torch.randn(2, 2, 70, 90)
    whole = net(images)
    exact = sliding_window_logits(net, images, tile=32, overlap=8, batch=4, blend="exact")  # radius 3 <= 8/2
    assert torch.allclose(exact, whole, atol=1e-6, rtol=0)
    too_small = sliding_window_logits(net, images, tile=32, overlap=4, batch=4, blend="exact")  # 3 > 4/2
    assert (too_small - whole).abs().max() > 1e-3
    blended = sliding_window_logits(net, images, tile=32, overlap=8, batch=4, blend="gaussian")
    assert (blended - whole).abs().max() > 1e-4  # blending mixes in tile-border values: not exact


@torch.inference_mode()
def test_exact_mode_with_pooling_needs_tiles_on_the_stride_grid() -> None:
    model = pixelseg.create_model("unet", num_classes=2, in_channels=2, base_channels=4, depth=2,
                                  padding="same").eval()
    images = torch.randn(1, 2, 150, 130)
    whole = model(images)
    aligned = sliding_window_logits(model, images, tile=96, overlap=64, blend="exact", align=4)
    assert torch.allclose(aligned, whole, atol=1e-5, rtol=0)


def test_unknown_blend_is_one_clear_error() -> None:
    with pytest.raises(PixelsegError, match="unknown blend 'box'"):
        sliding_window_logits(three_convs(), torch.randn(1, 2, 8, 8), tile=4, blend="box")  # type: ignore[arg-type]


def _write_tiled_tiff(path, pixels: np.ndarray, tile: int = 16) -> None:
    tifffile.imwrite(path, pixels, tile=(tile, tile), photometric="minisblack" if pixels.ndim == 2 else "rgb")


@torch.inference_mode()
def test_streaming_a_tiff_through_a_valid_unet_writes_the_whole_image_labels(tmp_path) -> None:
    model = small_valid_unet()
    pixels = np.random.default_rng(0).integers(0, 256, (70, 100), dtype=np.uint8)
    _write_tiled_tiff(tmp_path / "scene.tif", pixels)
    report = stream_predict(model, tmp_path / "scene.tif", tmp_path / "labels.tif", mean=[0.5], std=[0.25],
                            image_mode="L", tile=32)
    expected = forward_whole(model, ((torch.from_numpy(pixels).float() / 255 - 0.5) / 0.25)[None, None])
    with tifffile.TiffFile(tmp_path / "labels.tif") as tiff:
        assert tiff.pages[0].is_tiled and tiff.pages[0].tilewidth == 32
        labels = tiff.asarray()
    assert report.tiles == 3 * 4 and report.shape == (70, 100)
    np.testing.assert_array_equal(labels, expected.argmax(1)[0].numpy())


@torch.inference_mode()
def test_streaming_a_png_through_a_padded_network_equals_whole_image(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).eval()
    pixels = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    stream_predict(net, tmp_path / "scene.png", tmp_path / "labels.tif", mean=[0.5] * 3, std=[0.5] * 3,
                   tile=16, context=4)
    whole = net((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5)[None] / 0.5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), whole.argmax(1)[0].numpy())


def test_streaming_an_unreadable_tiff_names_the_file(tmp_path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(PixelsegError, match="bad.tif"):
        stream_predict(three_convs(), tmp_path / "bad.tif", tmp_path / "out.tif", mean=[0.0], std=[1.0], tile=16)


def test_class_map_is_argmax_over_classes_with_first_class_on_ties() -> None:
    logits = torch.randn(4, 30, 40)
    logits[:, :3, :3] = 0.5  # ties everywhere in this corner: class 0, as argmax
    logits[2, 10:12, 10:12] = logits[1, 10:12, 10:12] = 9.0  # a tie between classes 1 and 2
    assert torch.equal(class_map(logits), logits.argmax(0).to(torch.uint8))


@torch.inference_mode()
def test_streaming_reads_one_window_at_a_time(tmp_path, monkeypatch) -> None:
    from pixelseg.inference import tiling

    pixels = np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    _write_tiled_tiff(tmp_path / "scene.tif", pixels)
    areas: list[int] = []
    open_real = tiling.open_windows

    def recording(path, mode):
        reader = open_real(path, mode)
        read = reader.read

        def read_and_record(top, bottom, left, right):
            areas.append((bottom - top) * (right - left))
            return read(top, bottom, left, right)

        reader.read = read_and_record
        return reader

    monkeypatch.setattr(tiling, "open_windows", recording)
    net = nn.Conv2d(3, 2, 3, padding=1).eval()
    stream_predict(net, tmp_path / "scene.tif", tmp_path / "labels.tif", mean=[0.5] * 3, std=[0.5] * 3, tile=32,
                   context=4)
    assert len(areas) == 3 * 4 and max(areas) <= (32 + 2 * 4) ** 2  # never more than one tile and its context
