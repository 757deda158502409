"""pixelseg.io: image and volume files, palettes and pictures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from pixelseg.errors import PixelsegError
from pixelseg.io.images import IMAGE_SUFFIXES, image_to_tensor, list_images, read_image, read_rgb
from pixelseg.io.render import (
    colorize,
    default_palette,
    draw_instances,
    index_png,
    instance_colours,
    overlay,
    png_bytes,
)
from pixelseg.io.volumes import npy_bytes, read_volume, tif_bytes


def one_line_error(call) -> str:
    with pytest.raises(PixelsegError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_list_images_finds_every_suffix_in_any_case_and_nothing_else(tmp_path: Path) -> None:
    pixels = Image.new("RGB", (3, 2), (10, 20, 30))
    pixels.save(tmp_path / "a.webp")
    pixels.save(tmp_path / "b.PNG")
    pixels.save(tmp_path / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    assert ".webp" in IMAGE_SUFFIXES
    assert [p.name for p in list_images(tmp_path)] == ["a.webp", "b.PNG", "c.jpg"]
    assert "nowhere" in one_line_error(lambda: list_images(tmp_path / "nowhere"))


def test_read_image_fails_in_one_line_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("hello")
    message = one_line_error(lambda: read_image(tmp_path / "truncated.jpg"))
    assert "truncated.jpg" in message and "unreadable image" in message
    assert "text.png" in one_line_error(lambda: read_image(tmp_path / "text.png"))
    assert "missing.png" in one_line_error(lambda: read_image(tmp_path / "missing.png"))
    # A decompression bomb is refused per file, the limit read from the environment at every read.
    monkeypatch.setenv("PIXELSEG_MAX_IMAGE_PIXELS", str(64 * 64 - 1))
    message = one_line_error(lambda: read_image(tmp_path / "x.jpg"))
    assert "x.jpg" in message and "64x64 = 4,096 pixels, over the limit of 4,095" in message
    monkeypatch.setenv("PIXELSEG_MAX_IMAGE_PIXELS", str(64 * 64))
    assert read_image(tmp_path / "x.jpg").size == (64, 64)
    # Pillow's own DecompressionBombError (neither an OSError nor a ValueError) is one line too.
    assert not issubclass(Image.DecompressionBombError, OSError | ValueError)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # Pillow refuses above 3000, before our check
    monkeypatch.setenv("PIXELSEG_MAX_IMAGE_PIXELS", "3000")
    message = one_line_error(lambda: read_image(tmp_path / "x.jpg"))
    assert "x.jpg" in message and "too large" in message


def test_read_image_converts_or_keeps_the_mode(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    index_png(labels, [(0, 0, 0), (255, 0, 0), (0, 0, 255)]).save(tmp_path / "mask.png")
    kept = read_image(tmp_path / "mask.png", None)
    assert kept.mode == "P" and np.array_equal(np.asarray(kept), labels)
    assert read_image(tmp_path / "mask.png", "L").mode == "L"
    rgb = read_rgb(tmp_path / "mask.png")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    assert rgb[0, 1].tolist() == [255, 0, 0] and rgb[0, 2].tolist() == [0, 0, 255]


def test_image_to_tensor_agrees_with_torchvision() -> None:
    array = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = image_to_tensor(array)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 5, 7)
    torch.testing.assert_close(tensor, to_tensor(array))


def test_volume_bytes_round_trip_and_pickles_are_refused(tmp_path: Path) -> None:
    volume = np.random.default_rng(2).integers(0, 4, (3, 5, 6)).astype(np.uint8)
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(volume)), allow_pickle=False), volume)
    (tmp_path / "v.npy").write_bytes(npy_bytes(volume))
    assert np.array_equal(read_volume(tmp_path / "v.npy"), volume)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "objects.npy" in one_line_error(lambda: read_volume(tmp_path / "objects.npy"))
    assert "v.png" in one_line_error(lambda: read_volume(tmp_path / "v.png"))


def test_tif_bytes_write_one_page_per_slice(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    volume = np.random.default_rng(3).integers(0, 4, (4, 5, 6)).astype(np.uint8)
    (tmp_path / "v.tif").write_bytes(tif_bytes(volume))
    with tifffile.TiffFile(tmp_path / "v.tif") as handle:
        assert len(handle.pages) == 4
    assert np.array_equal(read_volume(tmp_path / "v.tif"), volume)


def test_default_palette_is_the_pascal_voc_colour_map() -> None:
    palette = default_palette(21)
    # The VOC 2012 devkit's colours: background, aeroplane, bicycle, bird, boat, ..., person (15).
    assert palette[:5] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert palette[15] == (192, 128, 128) and palette[20] == (0, 64, 128)


def test_index_png_colorize_and_overlay(tmp_path: Path) -> None:
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    labels = np.array([[0, 1], [2, 1]], dtype=np.int64)
    decoded = Image.open(io.BytesIO(png_bytes(index_png(labels, palette))))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded), labels)
    assert np.array_equal(np.asarray(decoded.convert("RGB")), colorize(labels, palette))
    assert colorize(labels, palette)[1, 0].tolist() == [0, 0, 255]
    blended = np.asarray(overlay(Image.new("RGB", (2, 2), (100, 100, 100)), labels, palette, alpha=0.5))
    assert blended[0, 1].tolist() == [178, 50, 50]  # (100 + 255) / 2 rounds to 178 (half to even)


def test_instances_are_drawn_in_distinct_colours_with_their_boxes() -> None:
    colours = instance_colours(12)
    assert len(set(colours)) == 12
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2:4, 2:4] = True
    masks[1, 6:9, 5:9] = True
    picture = np.asarray(draw_instances(image, masks, np.array([[2, 2, 4, 4], [5, 6, 9, 9]]), alpha=1.0))
    assert picture[3, 3].tolist() == list(colours[0]) and picture[7, 6].tolist() == list(colours[1])
    assert picture[0, 0].tolist() == [0, 0, 0]


def test_labels_outside_0_255_are_black_in_pictures_and_refused_in_palette_pngs() -> None:
    labels = np.array([[0, 1, 300, -1]], dtype=np.int64)
    colours = colorize(labels, [(10, 10, 10), (200, 0, 0)])
    assert colours.tolist() == [[[10, 10, 10], [200, 0, 0], [0, 0, 0], [0, 0, 0]]]
    assert "0..255" in one_line_error(lambda: index_png(labels, [(10, 10, 10)]))
