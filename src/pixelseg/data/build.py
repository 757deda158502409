"""Build the training and validation datasets named by a ``DataConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from ..engine.config import DataConfig
from ..errors import PixelsegError, closest
from .camvid import CamVid
from .folder import SegmentationFolder
from .isbi import ISBI2012
from .shapes import Shapes
from .transforms import AugmentConfig, default_normalization, evaluation_transform, training_transform

DATASET_NAMES = ("shapes", "folder", "camvid", "isbi2012")


@dataclass
class DatasetInfo:
    """What a model and its predictions need to know about the data it was trained on."""

    classes: list[str]
    palette: list[list[int]]
    in_channels: int
    image_mode: str
    ignore_index: int
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _require(config: DataConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) is None:
            raise PixelsegError(f"data.{name} must be set for data.name '{config.name}'")


def _make(config: DataConfig, split: str, train: bool, transform) -> Dataset:
    if config.name == "shapes":
        count = config.num_samples if train else config.val_samples
        return Shapes(count, size=config.image_size, split=split, seed=config.seed,
                      ignore_index=config.ignore_index, transform=transform)
    if config.name == "camvid":
        _require(config, "root")
        return CamVid(config.root, split, ignore_index=config.ignore_index, transform=transform)
    if config.name == "isbi2012":
        _require(config, "root")
        return ISBI2012(config.root, split, transform=transform, ignore_index=config.ignore_index)
    if config.name == "folder":
        images, masks = ("train_images", "train_masks") if train else ("val_images", "val_masks")
        _require(config, images, masks)
        if config.classes is None:
            raise PixelsegError("data.classes must list the class names for data.name 'folder'")
        return SegmentationFolder(Path(getattr(config, images)), Path(getattr(config, masks)),
                                  classes=config.classes, palette=config.palette,
                                  ignore_index=config.ignore_index, image_mode=config.image_mode,
                                  transform=transform)
    raise PixelsegError(f"unknown dataset '{config.name}'{closest(config.name, DATASET_NAMES)}")


def dataset_info(config: DataConfig) -> DatasetInfo:
    probe = _make(config, config.val_split if config.name != "shapes" else "val", False, None)
    image_mode = {"isbi2012": "L", "shapes": "RGB", "camvid": "RGB"}.get(config.name, config.image_mode)
    in_channels = len(image_mode)
    mean, std = default_normalization(in_channels)
    palette = [list(c) for c in probe.palette]
    return DatasetInfo(classes=list(probe.classes), palette=palette, in_channels=in_channels,
                       image_mode=image_mode, ignore_index=config.ignore_index,
                       mean=config.mean or mean, std=config.std or std)


def build_datasets(config: DataConfig, info: DatasetInfo, *, val_split: str | None = None
                   ) -> tuple[Dataset, Dataset]:
    augment = AugmentConfig(
        crop_size=config.crop_size,
        scale_range=tuple(config.scale_range) if config.scale_range else None,
        hflip=config.hflip, vflip=config.vflip, rotate90=config.rotate90,
        color_jitter=config.color_jitter, elastic_sigma=config.elastic_sigma)
    train = _make(config, config.train_split, True,
                  training_transform(augment, info.mean, info.std, config.ignore_index))
    if config.repeats < 1:
        raise PixelsegError(f"data.repeats must be at least 1, got {config.repeats}")
    if config.repeats > 1:
        train = ConcatDataset([train] * config.repeats)
    val = _make(config, val_split or config.val_split, False, evaluation_transform(info.mean, info.std))
    return train, val


def build_eval_dataset(config: DataConfig, info: DatasetInfo, split: str) -> Dataset:
    return _make(config, split, split == config.train_split, evaluation_transform(info.mean, info.std))
