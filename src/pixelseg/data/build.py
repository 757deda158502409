"""Build the training and validation datasets named by a ``DataConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from .config import DataConfig
from ..errors import PixelsegError, closest
from .camvid import CamVid
from .folder import SegmentationFolder, default_palette
from .isbi import ISBI2012
from .shapes import Shapes
from .transforms import AugmentConfig, default_normalization, evaluation_transform, training_transform
from .volumes import ISBI2012Volume, RandomVolumePatch, SyntheticVolumes, VolumeFolder

VOLUME_DATASETS = ("volumes", "synthetic_volumes", "isbi2012_volume")
DATASET_NAMES = ("shapes", "folder", "camvid", "isbi2012", *VOLUME_DATASETS)
SYNTHETIC_VOLUME_SPLITS = {"train": 0, "val": 1, "test": 2}


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
    spatial_dims: int = 2  # 3 for volumes (B, C, D, H, W)

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
    if config.name in VOLUME_DATASETS:
        return _make_volumes(config, split, train, transform)
    raise PixelsegError(f"unknown dataset '{config.name}'{closest(config.name, DATASET_NAMES)}")


def _make_volumes(config: DataConfig, split: str, train: bool, transform) -> Dataset:
    if config.name == "synthetic_volumes":
        if split not in SYNTHETIC_VOLUME_SPLITS:
            raise PixelsegError(f"synthetic_volumes has the splits {', '.join(SYNTHETIC_VOLUME_SPLITS)}, "
                                f"not '{split}'")
        count = config.num_samples if train else config.val_samples
        seed = config.seed * len(SYNTHETIC_VOLUME_SPLITS) + SYNTHETIC_VOLUME_SPLITS[split]
        return SyntheticVolumes(count, size=(config.image_size,) * 3, seed=seed, transform=transform)
    if config.name == "isbi2012_volume":
        _require(config, "root")
        return ISBI2012Volume(config.root, split, transform=transform)
    images, labels = ("train_images", "train_masks") if train else ("val_images", "val_masks")
    _require(config, images, labels)
    if config.classes is None:
        raise PixelsegError("data.classes must list the class names for data.name 'volumes'")
    return VolumeFolder(Path(getattr(config, images)), Path(getattr(config, labels)), classes=config.classes,
                        palette=config.palette, transform=transform, ignore_index=config.ignore_index)


def _check_augmentation(config: DataConfig) -> None:
    """2D-only options on volumes and 3D-only ones on images are refused rather than ignored."""
    if config.name in VOLUME_DATASETS:
        for key in ("crop_size", "scale_range", "color_jitter", "elastic_sigma"):
            if getattr(config, key):
                raise PixelsegError(f"data.{key} applies to 2D images, not to the volumes of '{config.name}' "
                                    "(volumes take patch_size, hflip, vflip, rotate90, dflip)")
    else:
        for key in ("patch_size", "dflip"):
            if getattr(config, key):
                raise PixelsegError(f"data.{key} applies to volumes, not to the 2D images of '{config.name}'")


def dataset_info(config: DataConfig) -> DatasetInfo:
    probe = _make(config, config.val_split if config.name != "shapes" else "val", False, None)
    if config.name in VOLUME_DATASETS:
        channels = int(probe[0][0].shape[0])
        palette = getattr(probe, "palette", None) or default_palette(len(probe.classes))
        return DatasetInfo(classes=list(probe.classes), palette=[list(c) for c in palette], in_channels=channels,
                           image_mode="L" if channels == 1 else "volume", ignore_index=config.ignore_index,
                           mean=[0.0] * channels, std=[1.0] * channels, spatial_dims=3)
    image_mode = {"isbi2012": "L", "shapes": "RGB", "camvid": "RGB"}.get(config.name, config.image_mode)
    in_channels = len(image_mode)
    mean, std = default_normalization(in_channels)
    palette = [list(c) for c in probe.palette]
    return DatasetInfo(classes=list(probe.classes), palette=palette, in_channels=in_channels,
                       image_mode=image_mode, ignore_index=config.ignore_index,
                       mean=config.mean or mean, std=config.std or std)


def build_datasets(config: DataConfig, info: DatasetInfo, *, val_split: str | None = None
                   ) -> tuple[Dataset, Dataset]:
    _check_augmentation(config)
    if config.repeats < 1:
        raise PixelsegError(f"data.repeats must be at least 1, got {config.repeats}")
    if info.spatial_dims == 3:
        # Volumes come z-scored by their dataset; training takes random patches, validation whole volumes.
        train = _make(config, config.train_split, True, RandomVolumePatch(
            config.patch_size, hflip=config.hflip, vflip=config.vflip, rotate90=config.rotate90,
            dflip=config.dflip, ignore_index=config.ignore_index))
        val = _make(config, val_split or config.val_split, False, None)
        return (ConcatDataset([train] * config.repeats) if config.repeats > 1 else train), val
    augment = AugmentConfig(
        crop_size=config.crop_size,
        scale_range=tuple(config.scale_range) if config.scale_range else None,
        hflip=config.hflip, vflip=config.vflip, rotate90=config.rotate90,
        color_jitter=config.color_jitter, elastic_sigma=config.elastic_sigma)
    train = _make(config, config.train_split, True,
                  training_transform(augment, info.mean, info.std, config.ignore_index))
    if config.repeats > 1:
        train = ConcatDataset([train] * config.repeats)
    val = _make(config, val_split or config.val_split, False, evaluation_transform(info.mean, info.std))
    return train, val


def build_eval_dataset(config: DataConfig, info: DatasetInfo, split: str) -> Dataset:
    transform = None if info.spatial_dims == 3 else evaluation_transform(info.mean, info.std)
    return _make(config, split, split == config.train_split, transform)
