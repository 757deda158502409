"""Data readers, the Shapes set and joint transforms (spine issue)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.data import ISBI2012, CamVid, SegmentationFolder, Shapes
from pixelseg.data.shapes import SHAPES_CLASSES
from pixelseg.data.transforms import AugmentConfig, ElasticDeformation, training_transform
from pixelseg.errors import PixelsegError

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


def write_pair(root: Path, stem: str, mask: np.ndarray, *, colour: bool = False) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "images" / f"{stem}.jpg")
    if colour:
        Image.fromarray(np.array(PALETTE, dtype=np.uint8)[mask]).save(root / "masks" / f"{stem}.png")
    else:
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")


def folder(root: Path) -> SegmentationFolder:
    return SegmentationFolder(root / "images", root / "masks", classes=["bg", "red", "green"], palette=PALETTE)


def test_folder_pairs_by_stem_and_reads_index_and_colour_masks(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), dtype=np.int64)
    mask[2:4, 3:7] = 2
    mask[0, 0] = 1
    write_pair(tmp_path, "b_index", mask)
    write_pair(tmp_path, "a_colour", mask, colour=True)
    dataset = folder(tmp_path)
    assert [image.stem for image, _ in dataset.samples] == ["a_colour", "b_index"]
    for index in range(2):
        image, decoded = dataset[index]
        assert image.size == (8, 6)
        np.testing.assert_array_equal(decoded, mask)
    assert dataset.classes == ["bg", "red", "green"] and dataset.palette == PALETTE


def test_ignore_index_passes_the_label_check(tmp_path: Path) -> None:
    mask = np.full((4, 4), 255, dtype=np.int64)
    mask[0] = 1
    write_pair(tmp_path, "x", mask)
    _, decoded = folder(tmp_path)[0]
    assert set(np.unique(decoded)) == {1, 255}


def error_of(call) -> str:
    with pytest.raises(PixelsegError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_input_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    assert "nowhere" in error_of(lambda: SegmentationFolder(tmp_path / "nowhere", tmp_path, num_classes=2))

    mask = np.zeros((4, 4), dtype=np.int64)
    write_pair(tmp_path, "good", mask)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    message = error_of(lambda: folder(tmp_path))
    assert "lonely.png" in message and "no mask" in message
    (tmp_path / "images" / "lonely.png").unlink()

    write_pair(tmp_path, "big", np.zeros((5, 5), dtype=np.int64))
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "masks" / "big.png")
    message = error_of(lambda: folder(tmp_path)[0])
    assert "big.png" in message and "6x4" in message and "5x5" in message
    (tmp_path / "images" / "big.jpg").unlink()
    (tmp_path / "masks" / "big.png").unlink()

    write_pair(tmp_path, "label", np.full((4, 4), 7, dtype=np.int64))
    message = error_of(lambda: folder(tmp_path)[1])
    assert "label.png" in message and "label 7 outside [0, 3)" in message
    (tmp_path / "images" / "label.jpg").unlink()

    data = (tmp_path / "images" / "good.jpg").read_bytes()
    (tmp_path / "images" / "good.jpg").write_bytes(data[: len(data) // 2])
    message = error_of(lambda: folder(tmp_path)[0])
    assert "good.jpg" in message and "unreadable image" in message

    write_pair(tmp_path, "good", mask)
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "masks" / "good.png")
    assert "not in the palette" in error_of(lambda: folder(tmp_path)[0])


def test_camvid_reads_the_segnet_split_with_void_ignored(camvid_root: Path) -> None:
    sizes = {split: len(CamVid(camvid_root, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    dataset = CamVid(camvid_root, "val")
    image, mask = dataset[0]
    assert image.size == (480, 360) and mask.shape == (360, 480)
    raw = np.asarray(Image.open(dataset.samples[0][1]))
    assert (raw == 11).any()
    np.testing.assert_array_equal(mask == 255, raw == 11)
    assert set(np.unique(mask)) <= set(range(11)) | {255}
    assert len(dataset.classes) == 11


def test_isbi_reads_membrane_as_class_0_and_splits_25_5(isbi_root: Path) -> None:
    train, val = ISBI2012(isbi_root, "train"), ISBI2012(isbi_root, "val")
    assert len(train) == 25 and len(val) == 5
    assert [p.stem for p, _ in val.samples] == ["25", "26", "27", "28", "29"]
    image, mask = val[0]
    raw = np.asarray(Image.open(val.samples[0][1]))
    assert image.mode == "L" and mask.shape == (512, 512)
    np.testing.assert_array_equal(mask == 0, raw == 0)
    np.testing.assert_array_equal(mask == 1, raw == 255)
    assert 0.1 < (mask == 0).mean() < 0.4  # membranes are a minority class
    assert "bogus" in error_of(lambda: ISBI2012(isbi_root, "bogus"))


def test_shapes_is_deterministic_and_has_every_class() -> None:
    first, second = Shapes(8, size=64, seed=3), Shapes(8, size=64, seed=3)
    other = Shapes(8, size=64, seed=4)
    for index in range(8):
        np.testing.assert_array_equal(np.asarray(first[index][0]), np.asarray(second[index][0]))
        np.testing.assert_array_equal(first[index][1], second[index][1])
    assert not np.array_equal(first[0][1], other[0][1])
    labels = np.concatenate([first[i][1].ravel() for i in range(8)])
    assert set(np.unique(labels)) == set(range(len(SHAPES_CLASSES)))
    train, test = Shapes(1, size=64, split="train"), Shapes(1, size=64, split="test")
    assert not np.array_equal(train[0][1], test[0][1])


def labelled_image(size: int = 64) -> tuple[Image.Image, np.ndarray]:
    """An image whose grey level encodes its mask (label * 80), so alignment can be checked."""
    mask = np.zeros((size, size), dtype=np.int64)
    mask[10:30, 8:40] = 1
    mask[40:60, 30:50] = 2
    return Image.fromarray((mask * 80).astype(np.uint8)).convert("RGB"), mask


@pytest.mark.parametrize("config", [
    AugmentConfig(crop_size=48, scale_range=(0.5, 2.0), hflip=True, vflip=True, rotate90=True),
    AugmentConfig(elastic_sigma=10.0, hflip=True),
])
def test_joint_transforms_keep_image_and_mask_aligned_and_masks_nearest(config: AugmentConfig) -> None:
    transform = training_transform(config, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), ignore_index=255)
    image, mask = labelled_image()
    for seed in range(6):
        torch.manual_seed(seed)
        pixels, target = transform(image, mask)
        assert target.dtype == torch.int64 and pixels.shape[-2:] == target.shape[-2:]
        assert set(target.unique().tolist()) <= {0, 1, 2, 255}  # nearest: no blended labels
        expected = torch.round(pixels[0] * 255 / 80)
        # Away from label edges (where the image is resampled bilinearly) image and mask agree exactly.
        padded = torch.nn.functional.pad(target[None, None].float(), (1, 1, 1, 1), mode="replicate")
        neighbours = torch.nn.functional.unfold(padded, 3).reshape(9, *target.shape)
        interior = (neighbours == target.float()).all(0) & (target != 255)
        assert interior.sum() > 200
        assert (expected[interior] == target[interior]).float().mean() > 0.995


def test_elastic_deformation_moves_pixels_smoothly() -> None:
    from torchvision import tv_tensors

    torch.manual_seed(0)
    ramp = torch.arange(64, dtype=torch.float32).repeat(64, 1)[None]
    warped = ElasticDeformation(sigma=10.0)(tv_tensors.Image(ramp))
    displacement = (warped - ramp)[0, 8:-8, 8:-8]
    assert displacement.abs().mean() > 1.0  # it deforms
    assert (displacement[:, 1:] - displacement[:, :-1]).abs().max() < 3.0  # smoothly


def test_rotate90_on_a_non_square_image_pads_the_mask_with_ignore_index() -> None:
    # A quarter turn of a 12x8 image keeps its size, so two corner strips have no source pixels:
    # they are padding, and must not become class 0 (background) in the mask.
    transform = training_transform(AugmentConfig(hflip=False, rotate90=True), mean=(0.0,) * 3, std=(1.0,) * 3,
                                   ignore_index=255)
    image, mask = Image.new("RGB", (12, 8), (90, 90, 90)), np.ones((8, 12), dtype=np.int64)
    padded = 0
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, target = transform(image, mask)
        assert target.shape == (8, 12)
        assert set(target.unique().tolist()) <= {1, 255}
        padded += int((target == 255).any())
    assert padded > 0  # some draws were quarter turns
