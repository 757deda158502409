"""pixelseg.data.build: one builder for every task, each split built once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.data import build as build_module
from pixelseg.data.build import build_data, build_eval_dataset, dataset_stats, task_of_dataset
from pixelseg.data.config import DataConfig
from pixelseg.data.instances import SYNTHETIC_CLASSES, SyntheticInstances, collate_detection
from pixelseg.data.shapes import Shapes
from pixelseg.data.volumes import SyntheticVolumes
from pixelseg.errors import PixelsegError


def count_constructions(monkeypatch, module_name: str) -> list[str]:
    """Record every dataset ``build.<module_name>(...)`` constructs."""
    made: list[str] = []
    original = getattr(build_module, module_name)

    class Counted(original):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(kwargs.get("split", args[1] if len(args) > 1 else "?"))

    monkeypatch.setattr(build_module, module_name, Counted)
    return made


def test_each_split_is_built_once_and_class_stats_reuse_the_training_set(monkeypatch) -> None:
    made = count_constructions(monkeypatch, "Shapes")
    config = DataConfig(name="shapes", num_samples=3, val_samples=2, image_size=32, repeats=2)
    data = build_data(config)
    assert made == ["train", "val"]
    assert data.kind == "semantic" and data.collate is None
    assert len(data.train) == 6 and len(data.val) == 2  # repeats apply to training only
    image, mask = data.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and mask.dtype == torch.int64
    assert data.info.classes == ["background", "circle", "square", "triangle"]
    assert data.info.in_channels == 3 and data.info.spatial_dims == 2 and data.info.category_ids is None

    stats = data.class_stats()
    assert made == ["train", "val"]  # nothing rebuilt
    raw = Shapes(3, size=32, split="train")
    expected = sum(np.bincount(raw.load(i)[1].ravel(), minlength=4) for i in range(3))
    assert stats.images == 3 and stats.pixels.tolist() == expected.tolist()  # each image once, despite repeats
    assert data.class_stats(limit=1).images == 1


def test_volume_class_stats_count_the_raw_labels_not_the_patches() -> None:
    config = DataConfig(name="synthetic_volumes", num_samples=2, val_samples=1, image_size=12, hflip=False,
                        patch_size=[4, 4, 4])
    data = build_data(config)
    assert data.kind == "volumetric" and data.info.spatial_dims == 3 and data.info.in_channels == 1
    assert data.train[0][1].shape == (4, 4, 4)
    raw = SyntheticVolumes(2, size=(12, 12, 12), seed=0)  # the training split's seed for data.seed 0
    expected = sum(np.bincount(raw[i][1].numpy().ravel(), minlength=3) for i in range(2))
    assert data.class_stats().pixels.tolist() == expected.tolist()


def test_synthetic_instances_in_the_semantic_vocabulary() -> None:
    config = DataConfig(name="synthetic_instances", num_samples=4, val_samples=2, image_size=48, seed=3)
    data = build_data(config)
    assert task_of_dataset(config.name) == data.kind == "instance"
    assert data.collate is collate_detection
    assert len(data.train) == 4 and len(data.val) == 2
    assert data.info.classes == SYNTHETIC_CLASSES and data.info.category_ids == [0, 1, 2, 3]
    image, target = data.val[1]
    expected_image, expected_target = SyntheticInstances(2, size=48, seed=3, split="val")[1]
    assert torch.equal(image, expected_image) and torch.equal(target["masks"], expected_target["masks"])
    images, targets = data.collate([data.train[0], data.train[1]])
    assert len(images) == len(targets) == 2 and "boxes" in targets[0]
    with pytest.raises(PixelsegError, match="instance data"):
        data.class_stats()


def write_coco(folder: Path, category: dict) -> Path:
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(folder / "a.png")
    path = folder / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": category["id"], "iscrowd": 0,
                         "bbox": [5, 4, 10, 8], "segmentation": [[5, 4, 15, 4, 15, 12, 5, 12]]}],
        "categories": [category]}))
    return path


def test_coco_instances_keep_the_source_category_ids(tmp_path: Path) -> None:
    train = write_coco(tmp_path / "train", {"id": 18, "name": "dog"})
    val = write_coco(tmp_path / "val", {"id": 18, "name": "dog"})
    config = DataConfig(name="coco_instances", train_annotations=str(train), train_images=str(train.parent),
                        val_annotations=str(val), val_images=str(val.parent))
    data = build_data(config)
    assert data.info.classes == ["background", "dog"] and data.info.category_ids == [0, 18]
    assert data.val[0][1]["labels"].tolist() == [1]
    assert len(build_eval_dataset(config, data.info, "train")) == 1

    other = write_coco(tmp_path / "other", {"id": 17, "name": "cat"})
    config.val_annotations, config.val_images = str(other), str(other.parent)
    with pytest.raises(PixelsegError, match="validation categories"):
        build_data(config)
    with pytest.raises(PixelsegError, match="data.train_annotations must be set"):
        build_data(DataConfig(name="coco_instances"))


def test_instance_folder_splits_off_the_last_val_count_images(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "ids").mkdir()
    for index in range(3):
        Image.new("RGB", (16, 12)).save(tmp_path / "img" / f"p{index}.png")
        ids = np.zeros((12, 16), dtype=np.uint8)
        ids[2:6, 3:9] = 1
        Image.fromarray(ids).save(tmp_path / "ids" / f"p{index}_mask.png")
    config = DataConfig(name="instance_folder", root=str(tmp_path), images_subdir="img", masks_subdir="ids",
                        val_count=1, classes=["background", "cell"])
    data = build_data(config)
    assert len(data.train) == 2 and len(data.val) == 1
    assert data.info.classes == ["background", "cell"]
    assert data.val[0][1]["boxes"].tolist() == [[3, 2, 9, 6]]
    assert len(build_eval_dataset(config, data.info, "val")) == 1
    config.val_count = 3
    with pytest.raises(PixelsegError, match="val_count"):
        build_data(config)


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "synthetic_instances", "crop_size": 32}, "data.crop_size applies to 2D images"),
    ({"name": "synthetic_instances", "rotate90": True}, "data.rotate90 is not supported"),
    ({"name": "shapes", "train_annotations": "a.json"}, "data.train_annotations applies to instance data"),
    ({"name": "shapez"}, "did you mean 'shapes'"),
    ({"name": "shapes", "repeats": 0}, "data.repeats must be at least 1"),
])
def test_options_for_another_kind_of_data_are_refused(changes, message) -> None:
    with pytest.raises(PixelsegError, match=message):
        build_data(DataConfig(**changes))


def test_dataset_stats_counts_any_split() -> None:
    config = DataConfig(name="shapes", num_samples=2, val_samples=2, image_size=32)
    val = Shapes(2, size=32, split="val")
    expected = sum(np.bincount(val.load(i)[1].ravel(), minlength=4) for i in range(2))
    assert dataset_stats(config, "val").pixels.tolist() == expected.tolist()
    assert dataset_stats(config).images == 2
