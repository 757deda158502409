"""The benchmarks' dataset readers, each on a tiny fixture written here in the real layout and file formats
(never the network), plus the Weizmann horses on the real folder and prediction-only folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pixelseg.data.build import (
    build_data,
    build_eval_dataset,
    check_dataset,
    check_split,
    dataset_splits,
    dataset_stats,
)
from pixelseg.data.config import DataConfig
from pixelseg.errors import PixelsegError

RNG = np.random.default_rng(0)
WEIZMANN = Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann_horse"


def write_rgb(path: Path, size: tuple[int, int] = (12, 8), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


def write_index(path: Path, values: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette(palette)
    image.save(path)


# ---- PASCAL VOC 2012 and SBD ---------------------------------------------------------------------------

VOC_IDS = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
# The VOC devkit's published colours (VOClabelcolormap) of a few classes.
VOC_KNOWN_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 12: (64, 0, 128), 15: (192, 128, 128), 20: (0, 64, 128),
                     255: (224, 224, 192)}


def make_voc(root: Path) -> Path:
    from pixelseg.data.voc import voc_palette

    voc = root / "VOCdevkit" / "VOC2012"
    flat = [c for colour in voc_palette(256) for c in colour]
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, ids in VOC_IDS.items():
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for name in ids:
            write_rgb(voc / "JPEGImages" / f"{name}.jpg")
            mask = np.zeros((8, 12), dtype=np.uint8)
            mask[2:6, 3:9] = 15
            mask[1, :] = 255  # the object's border
            write_index(voc / "SegmentationClass" / f"{name}.png", mask, flat)
    (lists / "trainval.txt").write_text("\n".join(VOC_IDS["train"] + VOC_IDS["val"]) + "\n")
    return voc


def make_sbd(root: Path) -> Path:
    from scipy.io import savemat

    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "inst").mkdir()
    # SBD train holds a VOC val image (left out of train_aug) and a VOC train one (read from VOC's PNG).
    (sbd / "train.txt").write_text("2008_000002\n2007_000033\n2007_000032\n")
    (sbd / "val.txt").write_text("2008_000003\n")
    for name in ("2008_000002", "2008_000003", "2007_000033", "2007_000032"):
        write_rgb(sbd / "img" / f"{name}.jpg")
        segmentation = np.zeros((8, 12), dtype=np.uint8)
        segmentation[:4, :] = 7  # car
        instances = (segmentation > 0).astype(np.uint8)
        savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": segmentation,
                                                         "Boundaries": np.zeros(1), "CategoriesPresent": 7}})
        savemat(sbd / "inst" / f"{name}.mat", {"GTinst": {"Segmentation": instances,
                                                           "Boundaries": np.zeros(1), "Categories": 7}})
    return sbd


def test_voc_reads_the_official_lists_palette_and_ignores_the_border(tmp_path):
    from pixelseg.data.voc import VOC, VOC_CLASSES

    make_voc(tmp_path)
    train = VOC(tmp_path, "train", ignore_index=254)
    assert [p[0].stem for p in train.samples] == VOC_IDS["train"]
    assert len(VOC(tmp_path, "trainval")) == 3
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"
    from pixelseg.data.voc import voc_palette
    assert all(voc_palette(256)[i] == colour for i, colour in VOC_KNOWN_COLOURS.items())
    image, mask = train.load(0)
    assert (image.width, image.height) == (12, 8)
    assert set(np.unique(mask)) == {0, 15, 254}
    assert (mask[1] == 254).all()


def test_voc_has_no_test_split_and_says_why(tmp_path):
    config = DataConfig(name="voc", root=str(tmp_path))
    assert "test" in dataset_splits(config)
    with pytest.raises(PixelsegError, match="never released"):
        check_split(config, "test")


def test_voc_aug_train_is_sbd_train_val_and_voc_train_minus_voc_val(tmp_path):
    from pixelseg.data.voc import VOCAug

    make_voc(tmp_path)
    sbd = make_sbd(tmp_path)
    train = VOCAug(tmp_path, "train")
    names = [p[0].stem for p in train.samples]
    assert names == ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    by_name = dict(zip(names, train.samples, strict=True))
    assert by_name["2007_000032"][1].suffix == ".png"  # VOC's own annotation wins
    assert by_name["2008_000002"][1] == sbd / "cls" / "2008_000002.mat"
    assert by_name["2008_000002"][0] == sbd / "img" / "2008_000002.jpg"  # not in VOC's JPEGImages
    _, mask = train.load(names.index("2008_000002"))
    assert (mask[:4] == 7).all() and (mask[4:] == 0).all()
    instances = train.load_instances(names.index("2008_000002"))
    assert instances.shape == (8, 12) and set(np.unique(instances)) == {0, 1}
    assert [p[0].stem for p in VOCAug(tmp_path, "val").samples] == VOC_IDS["val"]


def test_voc_aug_builds_through_the_config(tmp_path):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    bundle = build_data(DataConfig(name="voc_aug", root=str(tmp_path), crop_size=8))
    assert bundle.info.num_classes == 21 and bundle.info.palette[1] == [128, 0, 0]
    assert len(bundle.train) == 4 and len(bundle.val) == 1
    image, mask = bundle.val[0]
    assert image.shape == (3, 8, 12) and mask.shape == (8, 12)


# ---- Cityscapes ----------------------------------------------------------------------------------------

def make_cityscapes(root: Path) -> None:
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        stem = f"{city}_000000_000019"
        write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", fmt="PNG")
        labels = np.zeros((8, 12), dtype=np.uint8)
        labels[0, :] = 7  # road
        labels[1, :] = 26  # car
        labels[2, :] = 33  # bicycle
        labels[3, :] = 9  # parking: not evaluated
        labels[4, :] = 21  # vegetation
        write_index(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", labels)
        instances = labels.astype(np.int32)
        instances[1, :6], instances[1, 6:] = 26000, 26001
        Image.fromarray(instances.astype(np.uint16)).save(
            root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    from pixelseg.data.cityscapes import CITYSCAPES_CLASSES, Cityscapes

    make_cityscapes(tmp_path)
    train = Cityscapes(tmp_path, "train")
    assert len(CITYSCAPES_CLASSES) == 19 and len(train) == 1
    _, mask = train.load(0)
    # cityscapesScripts labels.py: road 7 → 0, car 26 → 13, bicycle 33 → 18, parking 9 → 255, vegetation 21 → 8
    assert [int(mask[row, 0]) for row in range(5)] == [0, 13, 18, 255, 8]
    assert (mask[5:] == 255).all()  # unlabeled (0) is ignored
    instances = train.load_instances(0)
    assert {26000, 26001} <= set(np.unique(instances).tolist())
    with pytest.raises(PixelsegError, match="withheld"):
        check_split(DataConfig(name="cityscapes", root=str(tmp_path)), "test")


def test_cityscapes_image_without_label_is_named(tmp_path):
    from pixelseg.data.cityscapes import Cityscapes

    make_cityscapes(tmp_path)
    write_rgb(tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png", fmt="PNG")
    with pytest.raises(PixelsegError, match="aachen_000001_000019_gtFine_labelIds.png"):
        Cityscapes(tmp_path, "train")


# ---- ADE20K, COCO-Stuff --------------------------------------------------------------------------------

def test_ade20k_ignores_zero_and_shifts_the_150_classes(tmp_path):
    from pixelseg.data.ade20k import ADE20K, ADE20K_CLASSES, ADE20K_PALETTE

    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        write_rgb(base / "images" / split / f"ADE_{split[:5]}_00000001.jpg")
        labels = np.zeros((8, 12), dtype=np.uint8)
        labels[0], labels[1], labels[2] = 1, 13, 150
        write_index(base / "annotations" / split / f"ADE_{split[:5]}_00000001.png", labels)
    assert len(ADE20K_CLASSES) == 150 and len(ADE20K_PALETTE) == 150
    # objectInfo150: 1 wall, 13 person, 150 flag
    assert (ADE20K_CLASSES[0], ADE20K_CLASSES[12], ADE20K_CLASSES[149]) == ("wall", "person", "flag")
    _, mask = ADE20K(tmp_path, "val").load(0)
    assert [int(mask[row, 0]) for row in range(4)] == [0, 12, 149, 255]


def test_coco_stuff_maps_the_182_ids_to_171_classes(tmp_path):
    from pixelseg.data.coco_stuff import COCO_STUFF_CLASSES, CocoStuff

    for folder in ("train2017", "val2017"):
        write_rgb(tmp_path / "images" / folder / "000000000139.jpg")
        labels = np.full((8, 12), 255, dtype=np.uint8)
        # stuffthingmaps hold id - 1: person (1), bird (16), banner (92), wood (182)
        labels[0], labels[1], labels[2], labels[3] = 0, 15, 91, 181
        write_index(tmp_path / "stuffthingmaps_trainval2017" / folder / "000000000139.png", labels)
    assert len(COCO_STUFF_CLASSES) == 171
    _, mask = CocoStuff(tmp_path, "val").load(0)
    names = [COCO_STUFF_CLASSES[int(mask[row, 0])] for row in range(4)]
    assert names == ["person", "bird", "banner", "wood"]
    assert (mask[4:] == 255).all()
    bad = np.zeros((8, 12), dtype=np.uint8)
    bad[0, 0] = 11  # COCO id 12 is unused
    write_index(tmp_path / "stuffthingmaps_trainval2017" / "train2017" / "000000000139.png", bad)
    with pytest.raises(PixelsegError, match="unused"):
        CocoStuff(tmp_path, "train").load(0)


# ---- DRIVE ---------------------------------------------------------------------------------------------

def make_drive(root: Path, numbers=range(1, 41)) -> None:
    for number in numbers:
        part = "test" if number <= 20 else "training"
        write_rgb(root / "DRIVE" / part / "images" / f"{number:02d}_{part}.tif", fmt="TIFF")
        vessels = np.zeros((8, 12), dtype=np.uint8)
        vessels[:, 5] = 255
        fov = np.zeros((8, 12), dtype=np.uint8)
        fov[1:7, 1:11] = 255
        for name, values in ((f"1st_manual/{number:02d}_manual1.gif", vessels),
                             (f"mask/{number:02d}_{part}_mask.gif", fov)):
            path = root / "DRIVE" / part / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(values).save(path, format="GIF")


def test_drive_ignores_pixels_outside_the_field_of_view(tmp_path):
    from pixelseg.data.drive import Drive

    make_drive(tmp_path)
    sizes = {split: len(Drive(tmp_path, split)) for split in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 16, "val": 4, "trainval": 20, "test": 20}
    _, mask = Drive(tmp_path, "test", ignore_index=99).load(0)
    assert (mask[0] == 99).all() and (mask[:, 0] == 99).all()
    assert (mask[1:7, 5] == 1).all() and (mask[1:7, 6] == 0).all()
    check_split(DataConfig(name="drive", root=str(tmp_path)), "test")  # labelled: allowed


# ---- medical volumes -----------------------------------------------------------------------------------

def test_promise12_metaimage_cases_read_as_depth_height_width(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from pixelseg.data.medical import MedicalVolumes

    label = np.zeros((3, 5, 7), dtype=np.uint8)  # (z, y, x)
    label[1, 2:4, 3:6] = 1
    part = tmp_path / "TrainingData_Part1"
    part.mkdir()
    for case in range(5):
        image = sitk.GetImageFromArray(RNG.normal(size=(3, 5, 7)).astype(np.float32))
        sitk.WriteImage(image, str(part / f"Case{case:02d}.mhd"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(part / f"Case{case:02d}_segmentation.mhd"))
    assert (tmp_path / "TrainingData_Part1" / "Case00.raw").is_file()  # MetaImage: header + raw data
    train, val = MedicalVolumes(tmp_path, "train"), MedicalVolumes(tmp_path, "val")
    assert [p[0].name for p in val.samples] == ["Case04.mhd"] and len(train) == 4
    image, target = train[0]
    assert image.shape == (1, 3, 5, 7) and target.shape == (3, 5, 7)
    assert np.array_equal(target.numpy(), label)
    (part / "Case02_segmentation.mhd").unlink()  # an unpaired case
    assert check_dataset("promise12", tmp_path) == [f"{part / 'Case02.mhd'}: no label volume Case02_segmentation.mhd"]


def test_nifti_decathlon_cases_are_transposed_to_depth_height_width(tmp_path):
    nibabel = pytest.importorskip("nibabel")

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    xyz = np.zeros((7, 5, 3), dtype=np.uint8)  # NIfTI stores (x, y, z)
    xyz[6, 4, 2] = 2
    for case in range(2):
        image = RNG.normal(size=(7, 5, 3, 2)).astype(np.float32)  # two modalities
        nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), tmp_path / "imagesTr" / f"prostate_{case:02d}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(xyz, np.eye(4)), tmp_path / "labelsTr" / f"prostate_{case:02d}.nii.gz")
    config = DataConfig(name="medical", root=str(tmp_path), classes=["background", "PZ", "TZ"])
    dataset = build_eval_dataset(config, None, "all")
    image, label = dataset[1]
    assert image.shape == (2, 3, 5, 7) and label.shape == (3, 5, 7)
    assert label[2, 4, 6] == 2 and label.sum() == 2
    with pytest.raises(PixelsegError, match="without labels"):
        check_split(config, "test")


# ---- Weizmann horses (the real folder) -----------------------------------------------------------------

def test_weizmann_horses_split_by_the_documented_rule():
    from pixelseg.data.weizmann import WeizmannHorse

    if not WEIZMANN.is_dir():
        pytest.skip(f"{WEIZMANN} is not available")
    root = WEIZMANN
    splits = {split: WeizmannHorse(root, split) for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 200, "val": 28, "test": 100}
    assert splits["test"].samples[0][0].name == "horse229.jpg"
    image, mask = splits["val"].load(0)
    gray = Image.open(root / "gray" / splits["val"].samples[0][0].name)
    assert (image.width, image.height) == gray.size == (mask.shape[1], mask.shape[0])
    assert set(np.unique(mask)) == {0, 1} and 0.05 < mask.mean() < 0.9


# ---- prediction-only folders ---------------------------------------------------------------------------

def test_a_folder_without_masks_is_a_prediction_only_set(tmp_path):
    from pixelseg.data.folder import SegmentationFolder

    for name in ("a", "b"):
        write_rgb(tmp_path / "images" / f"{name}.png", fmt="PNG")
    folder = SegmentationFolder(tmp_path / "images", None, classes=["bg", "fg"])
    assert len(folder) == 2 and not folder.has_masks
    assert folder.load_image(1).size == (12, 8)
    with pytest.raises(PixelsegError, match="no masks"):
        folder.load(0)
    config = DataConfig(name="folder", train_images=str(tmp_path / "images"), val_images=str(tmp_path / "images"),
                        test_images=str(tmp_path / "images"), classes=["bg", "fg"])
    with pytest.raises(PixelsegError, match="prediction-only"):
        build_data(config)
    with pytest.raises(PixelsegError, match="class statistics needs masks.*prediction-only"):
        dataset_stats(config)
    assert not build_eval_dataset(config, build_data(DataConfig()).info, "test").has_masks


# ---- pixelseg data check -------------------------------------------------------------------------------

def test_data_check_lists_each_problem_and_exits_2(tmp_path):
    import typer

    from pixelseg.cli import data as data_cli

    voc = make_voc(tmp_path)
    (voc / "JPEGImages" / "2007_000039.jpg").unlink()  # listed in train.txt but missing
    bad = np.zeros((8, 12), dtype=np.uint8)
    bad[0, 0] = 21  # no class 21 in VOC
    write_index(voc / "SegmentationClass" / "2007_000033.png", bad)
    problems = check_dataset("voc", tmp_path)
    assert len(problems) == 2
    assert "2007_000039.jpg: missing" in problems[0]
    assert "label 21 outside [0, 21)" in problems[1] and "2007_000033.png" in problems[1]
    app = typer.Typer()
    app.command()(lambda: None)  # a second command keeps "data" a sub-command
    data_cli.register(app)
    result = CliRunner().invoke(app, ["data", "check", "voc", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stdout.splitlines() == problems
    make_voc(tmp_path / "clean")
    result = CliRunner().invoke(app, ["data", "check", "voc", "--root", str(tmp_path / "clean")])
    assert result.exit_code == 0 and "no problems" in result.stdout
