"""Files that lie (issue 14): 16-bit and float images, EXIF orientation, odd colour modes, decompression
bombs, non-finite volumes, dataset paths that leave their root, and a property-based suite over the
image and mask readers. Expected values are computed here from the raw samples written into the files,
by the rules stated in ``pixelseg.io.images``, never by running the reader."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixelseg.data.folder import SegmentationFolder
from pixelseg.data.volumes import VolumeFolder, image_volume, normalize_volume
from pixelseg.errors import PixelsegError
from pixelseg.io.images import image_size, read_image, read_mask, read_rgb
from pixelseg.io.volumes import read_volume

BOUNDED = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BAD_INPUTS: set[str] = set()  # sha1 of every distinct bad file the property tests try
GOOD_INPUTS: set[str] = set()  # and of every readable file they check against the rules


def one_line_error(call, name: str) -> str:
    with pytest.raises(PixelsegError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and name in message, message
    return message


# ---- a PNG writer of any colour type and bit depth (the reader is Pillow; the writer is ours) --------

def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(samples: np.ndarray, bit_depth: int, colour_type: int, palette: bytes | None = None,
              transparency: bytes | None = None) -> bytes:
    """A PNG of ``samples`` (H, W, channels) exactly as given, filter 0 on every row."""
    height, width = samples.shape[:2]
    raw = bytearray()
    for row in samples.reshape(height, width, -1):
        raw += b"\0"
        if bit_depth == 16:
            raw += row.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw += row.astype(np.uint8).tobytes()
        else:
            bits = "".join(format(int(v), f"0{bit_depth}b") for v in row.ravel())
            bits += "0" * (-len(bits) % 8)
            raw += int(bits, 2).to_bytes(len(bits) // 8, "big")
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header)
    if palette is not None:
        body += chunk(b"PLTE", palette)
    if transparency is not None:
        body += chunk(b"tRNS", transparency)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the L of an RGB image (Pillow's documented conversion), before rounding."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# The colour types of the PNG standard and the bit depths each allows.
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def expected_rgb(samples: np.ndarray, depth: int, colour_type: int, palette: np.ndarray | None) -> np.ndarray:
    """What the documented rules make of raw PNG samples, as RGB (H, W, 3) uint8."""
    if colour_type == 3:
        return palette[samples[..., 0]]
    if depth == 16:
        eight = (samples >> 8).astype(np.uint8)  # the high byte
    elif depth < 8:
        eight = (samples.astype(np.int64) * 255 // (2**depth - 1)).astype(np.uint8)  # PNG's own scaling
    else:
        eight = samples.astype(np.uint8)
    if colour_type in (0, 4):
        return np.repeat(eight[..., :1], 3, axis=-1)
    return eight[..., :3]


# ---- 1. bit depth ----------------------------------------------------------------------------------

def test_sixteen_bit_grey_and_colour_pngs_span_the_full_range_not_clipped_at_255(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 32768, 65280, 65535]], dtype=np.uint16)
    (tmp_path / "grey.png").write_bytes(png_bytes(values[..., None], 16, 0))
    (tmp_path / "colour.png").write_bytes(png_bytes(np.repeat(values[..., None], 3, axis=-1), 16, 2))
    high_bytes = [0, 0, 1, 128, 255, 255]
    assert np.asarray(read_image(tmp_path / "grey.png", "L")).tolist() == [high_bytes]
    assert read_rgb(tmp_path / "grey.png")[0, :, 1].tolist() == high_bytes
    # Grey and colour 16-bit files agree (Pillow itself keeps the high byte of 16-bit colour).
    assert read_rgb(tmp_path / "colour.png")[0, :, 0].tolist() == high_bytes


def test_float_and_32_bit_tiffs_follow_the_documented_rule_or_are_refused(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "unit.tif", np.array([[0.0, 0.5, 1.0, 0.2]], dtype=np.float32))
    assert np.asarray(read_image(tmp_path / "unit.tif", "L")).tolist() == [[0, 128, 255, 51]]
    tifffile.imwrite(tmp_path / "wide.tif", np.array([[0.0, 300.0]], dtype=np.float32))
    assert "[0, 1]" in one_line_error(lambda: read_image(tmp_path / "wide.tif", "L"), "wide.tif")
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[0.0, np.nan]], dtype=np.float32))
    assert "NaN" in one_line_error(lambda: read_image(tmp_path / "nan.tif", "L"), "nan.tif")
    tifffile.imwrite(tmp_path / "int32.tif", np.array([[0, 65535, 512]], dtype=np.int32))
    assert np.asarray(read_image(tmp_path / "int32.tif", "L")).tolist() == [[0, 255, 2]]
    tifffile.imwrite(tmp_path / "negative.tif", np.array([[-5, 7]], dtype=np.int32))
    one_line_error(lambda: read_image(tmp_path / "negative.tif", "L"), "negative.tif")


def test_sixteen_bit_label_pngs_keep_their_values(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [300, 2, 1]], dtype=np.uint16)
    (tmp_path / "labels.png").write_bytes(png_bytes(labels[..., None], 16, 0))
    assert read_mask(tmp_path / "labels.png").tolist() == labels.tolist()
    # In a dataset: labels 0..2 in a 16-bit PNG are classes 0..2, not scaled to 0.
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (3, 2)).save(tmp_path / "images" / "a.png")
    (tmp_path / "masks" / "a.png").write_bytes(png_bytes(np.minimum(labels, 2)[..., None], 16, 0))
    _, mask = SegmentationFolder(tmp_path / "images", tmp_path / "masks", num_classes=3).load(0)
    assert mask.tolist() == [[0, 1, 2], [2, 2, 1]]


# ---- 2. EXIF orientation -------------------------------------------------------------------------

# How a viewer turns the stored pixels for each EXIF orientation (TIFF/EXIF 2.3, tag 0x0112).
VIEWER = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: np.swapaxes(a, 0, 1),
          6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


def save_with_orientation(array: np.ndarray, path: Path, orientation: int) -> None:
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


def test_a_portrait_photo_gets_a_portrait_mask_and_its_tagged_mask_turns_with_it(tmp_path: Path) -> None:
    stored = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)  # landscape pixels
    for folder in ("images", "masks", "plain"):
        (tmp_path / folder).mkdir()
    save_with_orientation(stored, tmp_path / "images" / "p.png", 6)  # shown as portrait
    assert image_size(tmp_path / "images" / "p.png") == (4, 6)
    assert np.array_equal(read_rgb(tmp_path / "images" / "p.png"), np.rot90(stored, -1))
    labels = (np.arange(24).reshape(4, 6) % 3).astype(np.uint8)
    # A mask saved with the photo's tag turns with it (both) ...
    save_with_orientation(labels, tmp_path / "masks" / "p.png", 6)
    image, mask = SegmentationFolder(tmp_path / "images", tmp_path / "masks", num_classes=3).load(0)
    assert image.size == (4, 6) and np.array_equal(mask, np.rot90(labels, -1))
    # ... a mask drawn on the displayed (portrait) photo has no tag and stays as drawn (neither) ...
    Image.fromarray(np.ascontiguousarray(np.rot90(labels, -1))).save(tmp_path / "masks" / "p.png")
    _, mask = SegmentationFolder(tmp_path / "images", tmp_path / "masks", num_classes=3).load(0)
    assert np.array_equal(mask, np.rot90(labels, -1))
    # ... and one drawn on the raw landscape pixels is refused for its size, not silently misaligned.
    Image.fromarray(labels).save(tmp_path / "masks" / "p.png")
    one_line_error(lambda: SegmentationFolder(tmp_path / "images", tmp_path / "masks", num_classes=3).load(0),
                   "p.png")


# ---- 3. colour modes ------------------------------------------------------------------------------

def test_cmyk_palette_with_transparency_la_and_rgba_convert_without_warnings(tmp_path: Path) -> None:
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    palette = bytes([10, 20, 30, 200, 100, 50])
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)[..., None]
    (tmp_path / "p.png").write_bytes(png_bytes(indices, 8, 3, palette, transparency=bytes([0])))
    (tmp_path / "la.png").write_bytes(png_bytes(np.array([[[7, 0], [200, 255]]], dtype=np.uint8), 8, 4))
    (tmp_path / "rgba.png").write_bytes(png_bytes(np.array([[[1, 2, 3, 0]]], dtype=np.uint8), 8, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        red = read_rgb(tmp_path / "cmyk.jpg")
        assert np.abs(red.astype(int) - [255, 0, 0]).max() <= 3
        assert read_rgb(tmp_path / "p.png")[:, :, :].tolist() == [[[10, 20, 30], [200, 100, 50]],
                                                                  [[200, 100, 50], [10, 20, 30]]]
        assert np.asarray(read_image(tmp_path / "la.png", "L")).tolist() == [[7, 200]]
        assert read_rgb(tmp_path / "rgba.png").tolist() == [[[1, 2, 3]]]  # alpha dropped, colour kept
        assert read_mask(tmp_path / "p.png").tolist() == [[0, 1], [1, 0]]  # indices, never colours
        assert read_mask(tmp_path / "la.png").tolist() == [[7, 200]]


# ---- 4. decompression bombs and per-item errors ----------------------------------------------------

def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` grey pixels, with one pixel of data."""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b""))


def test_a_bomb_and_a_decoder_crash_are_one_line_per_file_and_predict_finishes_the_others(
        tmp_path: Path, monkeypatch) -> None:
    import pixelseg
    from pixelseg.engine.predict import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bomb.png").write_bytes(bomb_png(30000, 30000))
    for read in (read_image, read_mask, image_size):
        message = one_line_error(lambda read=read: read(inputs / "bomb.png"), "bomb.png")
        assert "too large" in message and "900000000" in message and "PIXELSEG_MAX_IMAGE_PIXELS" in message
    Image.new("RGB", (40, 30), (90, 10, 200)).save(inputs / "good.png")
    Image.new("RGB", (80, 80)).save(inputs / "large.png")
    (inputs / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    model = pixelseg.create_model("unet", num_classes=3, in_channels=3, base_channels=4, depth=2, padding="same")
    model.pixelseg_config["data"] = {"classes": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
                                     "in_channels": 3, "image_mode": "RGB", "ignore_index": 255,
                                     "mean": [0.5] * 3, "std": [0.25] * 3}
    saved = model.save_pretrained(tmp_path / "model")
    monkeypatch.setenv("PIXELSEG_MAX_IMAGE_PIXELS", str(60 * 60))
    report = predict(saved, inputs, tmp_path / "out")
    assert report.predicted == 1 and (tmp_path / "out" / "good.png").is_file()
    failed = sorted(report.failed)
    assert len(failed) == 3 and all("\n" not in line for line in failed)
    assert [name for name in ("bomb.png", "large.png", "truncated.jpg") if any(name in f for f in failed)] == \
        ["bomb.png", "large.png", "truncated.jpg"]
    # Any exception of the decoder, not only OSError/ValueError, is a one-line error naming the file.
    monkeypatch.delenv("PIXELSEG_MAX_IMAGE_PIXELS")
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(struct.error("bad chunk")))
    assert "bad chunk" in one_line_error(lambda: read_image(inputs / "good.png"), "good.png")
    assert "bad chunk" in one_line_error(lambda: read_mask(inputs / "good.png"), "good.png")


def test_the_pixel_limit_setting_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("PIXELSEG_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(PixelsegError, match="PIXELSEG_MAX_IMAGE_PIXELS"):
        read_image(Path(__file__))


# ---- 5. volumes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_volume_with_non_finite_voxels_is_refused_for_prediction_and_training(tmp_path: Path, bad) -> None:
    volume = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    volume[1, 2, 3] = bad
    np.save(tmp_path / "v.npy", volume)
    message = one_line_error(lambda: read_volume(tmp_path / "v.npy"), "v.npy")
    assert "(1, 2, 3)" in message
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    np.save(tmp_path / "images" / "a.npy", volume)
    np.save(tmp_path / "labels" / "a.npy", np.zeros((3, 4, 5), dtype=np.int64))
    dataset = VolumeFolder(tmp_path / "images", tmp_path / "labels", num_classes=2)
    one_line_error(lambda: dataset[0], "a.npy")
    # float64 values beyond float32's range would turn infinite on the way in: refused too.
    one_line_error(lambda: image_volume(np.full((2, 2, 2), 1e300), "huge.npy"), "huge.npy")


def test_a_constant_volume_normalises_to_zeros_not_to_noise_or_nan() -> None:
    for value, shape in [(0.0, (1, 3, 4, 5)), (7.0, (1, 3, 4, 5)), (1e8, (1, 3, 4, 5)), (0.1, (1, 30, 40, 50)),
                         (3.3, (1, 30, 40, 50))]:
        normalised = normalize_volume(np.full(shape, value, dtype=np.float32))
        assert normalised.dtype == np.float32 and np.array_equal(normalised, np.zeros(shape)), value
    # A channel that varies is still scaled to unit variance next to a constant one.
    volume = np.stack([np.full((2, 2, 2), 3.0), np.arange(8.0).reshape(2, 2, 2)]).astype(np.float32)
    normalised = normalize_volume(volume)
    assert np.array_equal(normalised[0], np.zeros((2, 2, 2))) and abs(float(normalised[1].std()) - 1) < 1e-6


# ---- 6. a property-based suite over the image and mask readers --------------------------------------

def good_file(draw) -> tuple[bytes, np.ndarray]:
    """A PNG of a random colour type, bit depth and size, with the RGB the rules make of it."""
    colour_type = draw(st.sampled_from(sorted(CHANNELS)))
    depth = draw(st.sampled_from(DEPTHS[colour_type]))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, 2**depth, (height, width, CHANNELS[colour_type])).astype(np.uint16)
    palette = None
    if colour_type == 3:
        palette = rng.integers(0, 256, (2**depth, 3)).astype(np.uint8)
        data = png_bytes(samples, depth, 3, palette.tobytes(),
                         transparency=bytes(rng.integers(0, 256, 1).astype(np.uint8)) if seed % 2 else None)
    else:
        data = png_bytes(samples, depth, colour_type)
    return data, expected_rgb(samples, depth, colour_type, palette)


@st.composite
def readable_pngs(draw) -> tuple[bytes, np.ndarray]:
    return good_file(draw)


def reads_or_refuses(path: Path) -> None:
    """Every reader either gives its documented result or one line naming the file; nothing else."""
    for call in (lambda: read_image(path, "RGB"), lambda: read_image(path, "L"), lambda: read_mask(path),
                 lambda: image_size(path)):
        try:
            result = call()
        except PixelsegError as err:
            assert "\n" not in str(err) and path.name in str(err)
            continue
        if isinstance(result, Image.Image):
            assert result.mode in ("RGB", "L") and min(result.size) >= 1
        elif isinstance(result, np.ndarray):
            assert (result.ndim == 2 and result.dtype == np.int64) or (result.ndim == 3 and result.dtype == np.uint8)
        else:
            assert len(result) == 2 and min(result) >= 1


@BOUNDED
@given(readable_pngs())
def test_any_png_colour_type_bit_depth_and_size_reads_to_the_documented_pixels(tmp_path: Path, case) -> None:
    data, expected = case
    GOOD_INPUTS.add(hashlib.sha1(data).hexdigest())
    path = tmp_path / "any.png"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = read_rgb(path)
        grey = np.asarray(read_image(path, "L")).astype(int)
    assert np.array_equal(rgb, expected)
    assert np.abs(grey - luma(expected.astype(float))).max() <= 1  # Pillow's documented L, rounded


@BOUNDED
@given(readable_pngs(), st.integers(1, 8))
def test_every_exif_orientation_reads_as_a_viewer_shows_it(tmp_path: Path, case, orientation: int) -> None:
    _, expected = case
    path = tmp_path / "turned.png"
    save_with_orientation(expected, path, orientation)
    shown = VIEWER[orientation](expected)
    assert np.array_equal(read_rgb(path), shown)
    assert image_size(path) == (shown.shape[1], shown.shape[0])
    labels = expected[..., 0]
    save_with_orientation(labels, path, orientation)
    assert np.array_equal(read_mask(path), VIEWER[orientation](labels))


# Pillow modes and the formats that store them.
MODE_FORMATS = {"1": ("png", "tiff", "bmp"), "L": ("png", "jpeg", "tiff", "webp"), "LA": ("png", "tiff"),
                "P": ("png", "tiff", "bmp"), "RGB": ("png", "jpeg", "tiff", "webp", "bmp"), "RGBA": ("png", "tiff", "webp"),
                "CMYK": ("jpeg", "tiff"), "I;16": ("png", "tiff"), "I": ("tiff",), "F": ("tiff",)}


@st.composite
def pillow_files(draw) -> tuple[bytes, str, np.ndarray]:
    """An image of a random Pillow mode, size and format, with its stored values."""
    mode = draw(st.sampled_from(sorted(MODE_FORMATS)))
    form = draw(st.sampled_from(MODE_FORMATS[mode]))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "F":
        values = rng.uniform(0, draw(st.sampled_from([1.0, 2.0])), (height, width)).astype(np.float32)
        image = Image.fromarray(values)
    elif mode in ("I;16", "I"):
        values = rng.integers(0, 65536, (height, width))
        image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        channels = len(Image.new(mode, (1, 1)).getbands())
        values = rng.integers(0, 2 if mode == "1" else 256, (height, width, channels)).astype(np.uint8)
        image = Image.frombytes("L" if mode == "1" else mode, (width, height), (values * (255 if mode == "1" else 1)).tobytes())
        image = image.convert("1") if mode == "1" else image
    buffer = io.BytesIO()
    image.save(buffer, format=form)
    return buffer.getvalue(), form, values


@BOUNDED
@given(pillow_files())
def test_any_pillow_mode_and_format_reads_by_the_rules_or_is_refused(tmp_path: Path, case) -> None:
    data, form, values = case
    GOOD_INPUTS.add(hashlib.sha1(data).hexdigest())
    path = tmp_path / f"any.{form}"
    path.write_bytes(data)
    reads_or_refuses(path)
    with Image.open(path) as stored:
        mode = stored.mode
    if mode in ("I;16", "I"):  # 16-bit grey (or 32-bit holding 16-bit values): the high byte
        assert np.array_equal(np.asarray(read_image(path, "L")), (values >> 8).astype(np.uint8))
    elif mode == "F":  # float: x 255 within [0, 1], refused outside
        if values.max() <= 1:
            assert np.array_equal(np.asarray(read_image(path, "L")), np.rint(values * 255).astype(np.uint8))
        else:
            one_line_error(lambda: read_image(path, "L"), path.name)


@st.composite
def bad_files(draw) -> bytes:
    """Random bytes (some behind a real signature), truncated and bit-flipped PNG/JPEG/TIFF files."""
    kind = draw(st.sampled_from(["random", "signature", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=200))
    if kind == "signature":
        head = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\0", b"MM\0*", b"GIF89a", b"BM",
                                     b"RIFF\0\0\0\0WEBPVP8 "]))
        return head + draw(st.binary(min_size=0, max_size=200))
    data = draw(readable_pngs())[0] if draw(st.booleans()) else draw(pillow_files())[0]
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    flipped = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        flipped[draw(st.integers(0, len(flipped) - 1))] ^= draw(st.integers(1, 255))
    return bytes(flipped)


@BOUNDED
@given(bad_files(), st.sampled_from(["x.png", "x.jpg", "x.tif", "x.webp"]))
def test_bad_files_read_or_give_one_line_naming_the_file_never_another_exception(tmp_path: Path, data: bytes,
                                                                                  name: str) -> None:
    BAD_INPUTS.add(hashlib.sha1(name.encode() + data).hexdigest())
    path = tmp_path / name
    path.write_bytes(data)
    reads_or_refuses(path)


@BOUNDED
@given(st.integers(1, 40000), st.integers(1, 40000))
def test_declared_sizes_up_to_a_bomb_are_read_or_refused_in_one_line(tmp_path: Path, width: int, height: int) -> None:
    data = bomb_png(width, height)
    BAD_INPUTS.add(hashlib.sha1(data).hexdigest())
    (tmp_path / "declared.png").write_bytes(data)
    reads_or_refuses(tmp_path / "declared.png")


def test_tensor_of_a_read_image_is_unchanged_by_the_rules_for_8_bit_files(tmp_path: Path) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    assert torch.equal(torch.from_numpy(read_rgb(tmp_path / "plain.png")), torch.from_numpy(pixels))


# ---- 7. the streaming window readers follow the same rules ------------------------------------------

def test_streaming_windows_scale_16_bit_turn_exif_and_refuse_float_tiffs(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("zarr")
    from pixelseg.inference.tiling import open_windows

    values = np.random.default_rng(3).integers(0, 65536, (20, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", values, tile=(16, 16))
    (tmp_path / "deep.png").write_bytes(png_bytes(values[..., None], 16, 0))
    for name in ("deep.tif", "deep.png"):
        window = open_windows(tmp_path / name, "L").read(3, 19, 5, 21)
        assert np.array_equal(window[..., 0], (values[3:19, 5:21] >> 8).astype(np.uint8)), name
    stored = np.random.default_rng(4).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    save_with_orientation(stored, tmp_path / "turned.png", 8)
    reader = open_windows(tmp_path / "turned.png", "RGB")
    assert reader.shape == (10, 6) and np.array_equal(reader.read(0, 10, 0, 6), np.rot90(stored, 1))
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((20, 24), dtype=np.float32), tile=(16, 16))
    assert "float32" in one_line_error(lambda: open_windows(tmp_path / "float.tif", "L"), "float.tif")
    (tmp_path / "bomb.png").write_bytes(bomb_png(30000, 30000))
    one_line_error(lambda: open_windows(tmp_path / "bomb.png", "L"), "bomb.png")


def test_zz_report_how_many_distinct_bad_inputs_the_suite_tried() -> None:
    if not BAD_INPUTS and not GOOD_INPUTS:
        pytest.skip("the property tests did not run")
    print(f"\ndistinct bad image/mask inputs tried: {len(BAD_INPUTS)}; distinct readable files checked "
          f"against the documented pixels: {len(GOOD_INPUTS)}")
    assert len(BAD_INPUTS) >= 50 and len(GOOD_INPUTS) >= 50
