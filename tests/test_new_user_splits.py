"""Issue 19, a new user's own data: a test split for every reader, unknown splits refused in one line naming
the valid ones, and out-of-range data values refused when the config is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.data.build import build_data, build_eval_dataset, dataset_splits
from pixelseg.data.config import DataConfig
from pixelseg.data.instances import SyntheticInstances
from pixelseg.data.shapes import Shapes
from pixelseg.errors import PixelsegError
from pixelseg.io.config import build_typed


def write_split(root: Path, name: str, count: int, label: int) -> tuple[str, str]:
    """``count`` image/mask pairs whose masks are all ``label``; returns the two folders."""
    images, masks = root / f"{name}_images", root / f"{name}_masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (12, 10), (label * 60, 0, 0)).save(images / f"{name}{index}.png")
        Image.fromarray(np.full((10, 12), label, dtype=np.uint8)).save(masks / f"{name}{index}.png")
    return str(images), str(masks)


@pytest.fixture
def folder_config(tmp_path: Path) -> DataConfig:
    train_images, train_masks = write_split(tmp_path, "train", 3, 0)
    val_images, val_masks = write_split(tmp_path, "val", 2, 1)
    test_images, test_masks = write_split(tmp_path, "test", 1, 2)
    return DataConfig(name="folder", classes=["a", "b", "c"], train_images=train_images,
                      train_masks=train_masks, val_images=val_images, val_masks=val_masks,
                      test_images=test_images, test_masks=test_masks)


def test_folder_dataset_reads_its_test_folders(folder_config: DataConfig) -> None:
    data = build_data(folder_config)
    assert len(data.train) == 3 and len(data.val) == 2
    test = build_eval_dataset(folder_config, data.info, "test")
    assert len(test) == 1 and test[0][1].unique().tolist() == [2]  # the test masks, not the val ones


def test_unknown_split_is_refused_naming_the_valid_ones(folder_config: DataConfig) -> None:
    info = build_data(folder_config).info
    with pytest.raises(PixelsegError, match=r"has no split 'banana'; its splits are train, val, test$"):
        build_eval_dataset(folder_config, info, "banana")
    with pytest.raises(PixelsegError, match="did you mean 'test'"):
        build_eval_dataset(folder_config, info, "tset")


def test_folder_test_split_without_its_keys_is_refused_with_the_reason(folder_config: DataConfig) -> None:
    folder_config.test_images = folder_config.test_masks = None
    info = build_data(folder_config).info
    with pytest.raises(PixelsegError, match="set data.test_images and data.test_masks"):
        build_eval_dataset(folder_config, info, "test")


@pytest.mark.parametrize("name", ["shapes", "synthetic_volumes", "synthetic_instances"])
def test_every_built_in_set_refuses_an_unknown_split(name: str) -> None:
    config = DataConfig(name=name, num_samples=1, val_samples=1, image_size=16)
    info = build_data(config).info
    with pytest.raises(PixelsegError, match=f"data.name '{name}' has no split 'banana'; its splits are "
                                            "train, val, test"):
        build_eval_dataset(config, info, "banana")


def test_built_in_sets_have_a_test_split_of_their_own_seed() -> None:
    config = DataConfig(name="shapes", num_samples=2, val_samples=2, image_size=32, seed=1)
    data = build_data(config)
    test = build_eval_dataset(config, data.info, "test")
    expected = Shapes(2, size=32, split="test", seed=1).load(0)[1]
    assert torch.equal(test[0][1], torch.as_tensor(expected))
    assert not torch.equal(test[0][1], data.val[0][1])
    instances = DataConfig(name="synthetic_instances", num_samples=1, val_samples=1, image_size=32)
    image, _ = build_eval_dataset(instances, build_data(instances).info, "test")[0]
    assert torch.equal(image, SyntheticInstances(1, size=32, split="test")[0][0])


@pytest.mark.parametrize("name", ["isbi2012", "isbi2012_volume"])
def test_isbi_refuses_test_naming_the_reason(name: str) -> None:
    config = DataConfig(name=name, root="unused")
    assert list(dataset_splits(config)) == ["train", "val", "all", "test"]
    with pytest.raises(PixelsegError, match="no labelled test split: the ISBI 2012 challenge withheld"):
        build_eval_dataset(config, None, "test")  # refused before any file is read
    with pytest.raises(PixelsegError, match="its splits are train, val, all, test"):
        build_eval_dataset(config, None, "banana")


def test_camvid_has_a_test_split() -> None:
    assert list(dataset_splits(DataConfig(name="camvid", root="unused"))) == ["train", "val", "test"]


def write_instance_folder(root: Path, images: str, masks: str, count: int) -> None:
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (16, 12)).save(root / images / f"p{index}.png")
        ids = np.zeros((12, 16), dtype=np.uint8)
        ids[2:6, 3:9 + index] = 1
        Image.fromarray(ids).save(root / masks / f"p{index}_mask.png")


def test_instance_folder_test_split_from_its_own_folders(tmp_path: Path) -> None:
    write_instance_folder(tmp_path, "img", "ids", 3)
    write_instance_folder(tmp_path, "test/img", "test/ids", 2)
    config = DataConfig(name="instance_folder", root=str(tmp_path), images_subdir="img", masks_subdir="ids",
                        val_count=1)
    info = build_data(config).info
    with pytest.raises(PixelsegError, match="set data.test_images and data.test_masks"):
        build_eval_dataset(config, info, "test")
    config.test_images, config.test_masks = "test/img", str(tmp_path / "test" / "ids")  # relative or absolute
    test = build_eval_dataset(config, info, "test")
    assert len(test) == 2 and test[1][1]["boxes"].tolist() == [[3, 2, 10, 6]]
    with pytest.raises(PixelsegError, match="its splits are train, val, all, test"):
        build_eval_dataset(config, info, "banana")


def test_coco_instances_test_split_from_test_annotations(tmp_path: Path) -> None:
    def write(folder: Path, width: int) -> Path:
        folder.mkdir()
        Image.new("RGB", (width, 30)).save(folder / "a.png")
        path = folder / "instances.json"
        path.write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.png", "width": width, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [5, 4, 10, 8],
                             "segmentation": [[5, 4, 15, 4, 15, 12, 5, 12]]}],
            "categories": [{"id": 3, "name": "cell"}]}))
        return path

    train, test = write(tmp_path / "train", 40), write(tmp_path / "test", 50)
    config = DataConfig(name="coco_instances", train_annotations=str(train), train_images=str(train.parent),
                        val_annotations=str(train), val_images=str(train.parent))
    info = build_data(config).info
    with pytest.raises(PixelsegError, match="set data.test_annotations and data.test_images"):
        build_eval_dataset(config, info, "test")
    config.test_annotations, config.test_images = str(test), str(test.parent)
    image, _ = build_eval_dataset(config, info, "test")[0]
    assert image.shape[-1] == 50


@pytest.mark.parametrize(("values", "message"), [
    ({"batch_size": 0}, "data.batch_size must be at least 1, got 0"),
    ({"val_batch_size": 0}, "data.val_batch_size must be at least 1, got 0"),
    ({"num_workers": -1}, "data.num_workers must be at least 0, got -1"),
    ({"repeats": 0}, "data.repeats must be at least 1, got 0"),
    ({"image_size": 4}, "data.image_size must be at least 8, got 4"),
    ({"num_samples": 0}, "data.num_samples must be at least 1, got 0"),
    ({"val_samples": 0}, "data.val_samples must be at least 1, got 0"),
    ({"val_count": 0}, "data.val_count must be at least 1, got 0"),
    ({"crop_size": 0}, "data.crop_size must be at least 1, got 0"),
    ({"patch_size": [8, 8]}, r"data.patch_size must be three positive sizes \[D, H, W\], got \[8, 8\]"),
    ({"patch_size": [8, 0, 8]}, "data.patch_size must be three positive sizes"),
    ({"scale_range": [2.0, 0.5]}, r"data.scale_range must be two positive numbers \[low, high\] with low <= high"),
    ({"scale_range": [0.0, 1.0]}, "data.scale_range must be two positive numbers"),
    ({"color_jitter": -0.1}, "data.color_jitter must be 0 or more, got -0.1"),
    ({"elastic_sigma": -1.0}, "data.elastic_sigma must be 0 or more, got -1.0"),
    ({"ignore_index": 300}, r"data.ignore_index must be in 0..255 or -1, got 300"),
    ({"ignore_index": -100}, r"data.ignore_index must be in 0..255 or -1, got -100"),
    ({"std": [0.5, 0.0, 0.5]}, "data.std must be positive"),
])
def test_out_of_range_values_are_refused_at_config_load(values: dict, message: str) -> None:
    with pytest.raises(PixelsegError, match=f"^{message}"):
        build_typed(DataConfig, values, "data")


def test_range_limits_themselves_are_accepted() -> None:
    config = build_typed(DataConfig, {"batch_size": 1, "num_workers": 0, "image_size": 8, "ignore_index": -1,
                                      "scale_range": [1.0, 1.0], "patch_size": [1, 1, 1], "crop_size": 1},
                         "data")
    assert config.ignore_index == -1 and config.image_size == 8


def test_an_experiment_config_with_a_value_out_of_range_fails_at_load_naming_the_key(tmp_path: Path) -> None:
    from pixelseg.engine.config import load_config

    path = tmp_path / "experiment.yaml"
    path.write_text("data: {name: shapes, batch_size: 0}\n")
    with pytest.raises(PixelsegError, match="experiment.yaml: data.batch_size must be at least 1, got 0"):
        load_config(path)
    with pytest.raises(PixelsegError, match="data.ignore_index must be in 0..255 or -1, got 256"):
        load_config(path, ["data.batch_size=2", "data.ignore_index=256"])
