"""Build the data of any task from a ``DataConfig``: each split once, plus what the model needs to know.

``data.name`` picks the dataset and so the kind of task: semantic (2D label maps), volumetric (3D label
volumes) or instance (torchvision detection targets, batched by :func:`collate_detection`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import ConcatDataset, Dataset

from ..errors import PixelsegError, closest
from ..io.render import default_palette
from .ade20k import ADE20K
from .camvid import CamVid
from .cityscapes import Cityscapes
from .coco_stuff import CocoStuff
from .config import DataConfig
from .drive import Drive
from .folder import SegmentationFolder
from .instances import (
    CocoInstances,
    InstanceMaskFolder,
    RandomFlipInstances,
    SyntheticInstances,
    collate_detection,
)
from .isbi import ISBI2012
from .keypoints import SyntheticKeypoints
from .medical import PROMISE12_CLASSES, MedicalVolumes
from .shapes import Shapes
from .stats import ClassStats, count_dataset_classes
from .synthetic_panoptic import SyntheticPanoptic
from .transforms import default_normalization, evaluation_transform, training_transform
from .voc import VOC, VOCAug
from .volumes import ISBI2012Volume, RandomVolumePatch, SyntheticVolumes, VolumeFolder
from .weight_map import WeightMapped
from .weizmann import WeizmannHorse

Kind = Literal["semantic", "volumetric", "instance", "panoptic", "keypoints"]

# The benchmarks' readers under ``root``: each takes (root, split, ignore_index=, transform=, strict=).
BENCHMARK_READERS: dict[str, Callable[..., Any]] = {
    "voc": VOC, "voc_aug": VOCAug, "cityscapes": Cityscapes, "ade20k": ADE20K, "coco_stuff": CocoStuff,
    "drive": Drive, "weizmann_horse": WeizmannHorse}
# Each benchmark's splits, and why it has no labelled test split where it has none.
BENCHMARK_SPLITS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "voc": (("train", "val", "trainval"), "PASCAL VOC 2012's test labels were never released; score on 'val'"),
    "voc_aug": (("train", "val"), "PASCAL VOC 2012's test labels were never released; score on 'val'"),
    "cityscapes": (("train", "val"), "Cityscapes' test labels are withheld by its benchmark server; score on 'val'"),
    "ade20k": (("train", "val"), "ADE20K SceneParsing's test labels are not public; score on 'val'"),
    "coco_stuff": (("train", "val"), "COCO-Stuff's test-dev labels are withheld; score on 'val'"),
    "drive": (("train", "val", "trainval", "test"), None),
    "weizmann_horse": (("train", "val", "test", "all"), None),
    "medical": (("train", "val", "all"), "the medical volumes' test cases come without labels; score on 'val'"),
    "promise12": (("train", "val", "all"), "PROMISE12's test cases come without labels; score on 'val'"),
}
SEMANTIC_DATASETS = ("shapes", "folder", "camvid", "isbi2012", *BENCHMARK_READERS)
VOLUME_DATASETS = ("volumes", "synthetic_volumes", "isbi2012_volume", "medical", "promise12")
INSTANCE_DATASETS = ("synthetic_instances", "coco_instances", "instance_folder")
PANOPTIC_DATASETS = ("synthetic_panoptic",)
KEYPOINT_DATASETS = ("synthetic_keypoints",)
DATASET_NAMES = (*SEMANTIC_DATASETS, *VOLUME_DATASETS, *INSTANCE_DATASETS, *PANOPTIC_DATASETS, *KEYPOINT_DATASETS)
DETECTION_KINDS = ("instance", "panoptic", "keypoints")  # batched by collate_detection
SYNTHETIC_VOLUME_SPLITS = {"train": 0, "val": 1, "test": 2}
# Options of one kind of data that the others cannot honour: refused rather than ignored.
_ONLY_FOR = {
    "semantic": ("crop_size", "scale_range", "color_jitter", "elastic_sigma"),
    "volumetric": ("patch_size", "dflip"),
    "instance": ("train_annotations", "val_annotations", "test_annotations", "images_subdir", "masks_subdir"),
}
# The config keys that name the test split of the datasets read from the user's folders.
_TEST_KEYS = {
    "folder": ("test_images", "test_masks"),
    "volumes": ("test_images", "test_masks"),
    "instance_folder": ("test_images", "test_masks"),
    "coco_instances": ("test_annotations", "test_images"),
}
ISBI_SECTIONS = {"isbi2012": "sections 0–24 train and 25–29 validate",
                 "isbi2012_volume": "columns 0–383 of every section train and 384–511 validate"}
_DESCRIBED = {"semantic": "2D images", "volumetric": "volumes", "instance": "instance data",
              "panoptic": "panoptic data", "keypoints": "keypoint data"}


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
    category_ids: list[int] | None = None  # instance data: the source's category id of each label
    isthing: list[bool] | None = None  # panoptic data: whether each class is a thing (else stuff)
    keypoint_names: list[str] | None = None  # keypoint data: the name of each keypoint, in order

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class DataBundle:
    """The datasets of one experiment, built once: ``train`` (augmented, repeated ``data.repeats``
    times) and ``val`` with their transforms applied, ``collate`` for a ``DataLoader`` (``None``: the
    default), and ``kind`` of task the data is for."""

    info: DatasetInfo
    train: Dataset
    val: Dataset
    collate: Callable[[list[Any]], Any] | None
    kind: Kind
    train_once: Dataset = field(repr=False)  # the training set without repeats

    def class_stats(self, limit: int | None = None) -> ClassStats:
        """Class pixel counts of the training split's raw masks (before augmentation), the first
        ``limit`` samples only if given; for ``class_weights: median_frequency | enet``."""
        if self.kind in DETECTION_KINDS:
            raise PixelsegError(f"class statistics count label maps; {self.kind} data has none "
                                "(class_weights apply to semantic and volumetric tasks)")
        return count_dataset_classes(self.train_once, self.info.classes, self.info.ignore_index, limit)


def task_of_dataset(name: str) -> Kind:
    """The task a dataset name is for (``semantic``, ``volumetric``, ``instance`` or ``panoptic``)."""
    if name in SEMANTIC_DATASETS:
        return "semantic"
    if name in VOLUME_DATASETS:
        return "volumetric"
    if name in INSTANCE_DATASETS:
        return "instance"
    if name in PANOPTIC_DATASETS:
        return "panoptic"
    if name in KEYPOINT_DATASETS:
        return "keypoints"
    raise PixelsegError(f"unknown dataset '{name}'{closest(name, DATASET_NAMES)}")


def build_data(config: DataConfig, *, weight_map: Any = None) -> DataBundle:
    """The training and validation sets a ``DataConfig`` names, and what the model needs to know.

    ``weight_map`` (``train.weight_map``: ``w0``, ``sigma``, ...) gives each 2D training sample U-Net's
    per-pixel loss weights (:mod:`pixelseg.data.weight_map`): the batches become (images, masks, weights)."""
    kind = task_of_dataset(config.name)
    _check_options(config, kind)
    check_split(config, config.train_split)
    check_split(config, config.val_split)
    if kind == "keypoints":
        train = _make_keypoints(config, config.train_split, train=True)
        val = _make_keypoints(config, config.val_split, train=False)
        info = _keypoint_info(config, val)
    elif kind == "panoptic":
        train = _make_panoptic(config, config.train_split, train=True)
        val = _make_panoptic(config, config.val_split, train=False)
        info = _panoptic_info(config, val)
    elif kind == "instance":
        train = _make_instances(config, config.train_split, train=True)
        val = _make_instances(config, config.val_split, train=False)
        info = _instance_info(config, train, val)
        if config.hflip:
            train = RandomFlipInstances(train)
    elif kind == "volumetric":
        # Volumes come z-scored by their dataset; training takes random patches, validation whole volumes.
        train = _make_volumes(config, config.train_split, True, RandomVolumePatch(
            config.patch_size, hflip=config.hflip, vflip=config.vflip, rotate90=config.rotate90,
            dflip=config.dflip, ignore_index=config.ignore_index))
        val = _make_volumes(config, config.val_split, False, None)
        info = _volume_info(config, val)
    else:
        _refuse_without_masks(config, config.train_split, config.val_split, why="training")
        image_mode, mean, std = _normalization(config)
        train = _make_images(config, config.train_split, True,
                             training_transform(config.augment(), mean, std, config.ignore_index))
        val = _make_images(config, config.val_split, False, evaluation_transform(mean, std))
        info = DatasetInfo(classes=list(val.classes), palette=[list(c) for c in val.palette],
                           in_channels=len(image_mode), image_mode=image_mode,
                           ignore_index=config.ignore_index, mean=mean, std=std)
        if weight_map is not None:
            train = WeightMapped(train, weight_map, config.ignore_index)
    if weight_map is not None and kind != "semantic":
        raise PixelsegError(f"train.weight_map applies to 2D label maps, not to the {_DESCRIBED[kind]} of "
                            f"'{config.name}'")
    repeated = ConcatDataset([train] * config.repeats) if config.repeats > 1 else train
    return DataBundle(info=info, train=repeated, val=val, train_once=train, kind=kind,
                      collate=collate_detection if kind in DETECTION_KINDS else None)


def collate_for(config: DataConfig) -> Callable[[list[Any]], Any] | None:
    """The ``DataLoader`` collate function of the data a config names (``None``: PyTorch's default)."""
    return collate_detection if task_of_dataset(config.name) in DETECTION_KINDS else None


def build_eval_dataset(config: DataConfig, info: DatasetInfo, split: str) -> Dataset:
    """One split, unaugmented, for evaluation or statistics (``info`` from :func:`build_data`); a split the
    dataset does not have is refused in one line naming the ones it has (:func:`check_split`)."""
    kind = task_of_dataset(config.name)
    check_split(config, split)
    train = split == config.train_split
    if kind == "instance":
        return _make_instances(config, split, train=train)
    if kind == "panoptic":
        return _make_panoptic(config, split, train=False)
    if kind == "keypoints":
        return _make_keypoints(config, split, train=split == config.train_split)
    if kind == "volumetric":
        return _make_volumes(config, split, train, None)
    return _make_images(config, split, train, evaluation_transform(info.mean, info.std))


def dataset_stats(data_config: DataConfig, split: str | None = None, limit: int | None = None) -> ClassStats:
    """Count the classes of a split (default: the training split) of the dataset a ``DataConfig`` names."""
    if split is not None:
        check_split(data_config, split)
    _refuse_without_masks(data_config, split or data_config.train_split, why="class statistics")
    bundle = build_data(data_config)
    if split is None or split == data_config.train_split:
        return bundle.class_stats(limit)
    dataset = build_eval_dataset(data_config, bundle.info, split)
    return count_dataset_classes(dataset, bundle.info.classes, bundle.info.ignore_index, limit)


def dataset_splits(config: DataConfig) -> dict[str, str | None]:
    """The split names of the dataset a config names, each with ``None`` when it can be built or the
    reason it cannot (e.g. ``test`` of a folder dataset without ``data.test_images``)."""
    name = config.name
    task_of_dataset(name)
    if name in ("shapes", "synthetic_volumes", "synthetic_instances", "synthetic_panoptic", "synthetic_keypoints",
                "camvid"):
        return {"train": None, "val": None, "test": None}
    if name in BENCHMARK_SPLITS:
        names, no_test = BENCHMARK_SPLITS[name]
        splits = dict.fromkeys(names)
        if "test" not in splits:
            splits["test"] = f"{name} has no labelled test split: {no_test}"
        return splits
    if name in ("isbi2012", "isbi2012_volume"):
        # The challenge's 30 test sections were released without labels: nothing to score against.
        return {"train": None, "val": None, "all": None,
                "test": f"{name} has no labelled test split: the ISBI 2012 challenge withheld the labels of its "
                        f"test sections, so {ISBI_SECTIONS[name]}; score on 'val'"}
    splits: dict[str, str | None] = {config.train_split: None, config.val_split: None}
    if name == "instance_folder":
        splits["all"] = None
    if "test" not in splits:
        keys = _TEST_KEYS[name]
        needed = keys[:1] if name == "folder" else keys  # a folder's test images alone: prediction only
        missing = [key for key in needed if getattr(config, key) is None]
        splits["test"] = (f"data.name '{name}' has a test split only when the config names it: set "
                          f"{' and '.join(f'data.{key}' for key in keys)}") if missing else None
    return splits


def check_split(config: DataConfig, split: str) -> None:
    """Refuse, in one line naming the valid splits, a split the dataset does not have or cannot build."""
    splits = dataset_splits(config)
    if split not in splits:
        raise PixelsegError(f"data.name '{config.name}' has no split '{split}'; its splits are "
                            f"{', '.join(splits)}{closest(split, list(splits))}")
    if splits[split] is not None:
        raise PixelsegError(str(splits[split]))


# ---- checks and normalisation --------------------------------------------------------------------------

def _refuse_without_masks(config: DataConfig, *splits: str, why: str) -> None:
    """A folder split named without its masks is a prediction-only set: refused for what needs labels."""
    if config.name != "folder":
        return
    for split in splits:
        images, masks = _folder_keys(config, split, "images", "masks")
        if getattr(config, images) is not None and getattr(config, masks) is None:
            raise PixelsegError(f"{why} needs masks, but data.{masks} is not set: the images of "
                                f"data.{images} are a prediction-only set")


def _require(config: DataConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) is None:
            raise PixelsegError(f"data.{name} must be set for data.name '{config.name}'")


def _check_options(config: DataConfig, kind: Kind) -> None:
    """Options for another kind of data are refused rather than ignored."""
    for other, keys in _ONLY_FOR.items():
        if other == kind:
            continue
        for key in keys:
            if getattr(config, key):
                raise PixelsegError(f"data.{key} applies to {_DESCRIBED[other]}, not to the "
                                    f"{_DESCRIBED[kind]} of '{config.name}'")
    if kind == "keypoints" and config.hflip:
        raise PixelsegError(f"data.hflip is not available for '{config.name}': a left-right flip would swap its "
                            "left and right keypoints (set data.hflip: false)")
    if kind in DETECTION_KINDS:
        for key in ("vflip", "rotate90"):
            if getattr(config, key):
                raise PixelsegError(f"data.{key} is not supported for the instance data of '{config.name}' "
                                    "(hflip is)")


def _folder_keys(config: DataConfig, split: str, first: str, second: str) -> tuple[str, str]:
    """The config keys naming a split's folders (or files), e.g. ``("val_images", "val_masks")``."""
    prefix = {config.train_split: "train", config.val_split: "val"}.get(split, split)
    return f"{prefix}_{first}", f"{prefix}_{second}"


def _normalization(config: DataConfig) -> tuple[str, list[float], list[float]]:
    """The image mode of a 2D dataset and the mean and std its images are normalised with."""
    image_mode = "L" if config.name == "isbi2012" else "RGB" if config.name in (
        "shapes", "camvid", *BENCHMARK_READERS) else config.image_mode
    mean, std = default_normalization(len(image_mode))
    return image_mode, list(config.mean or mean), list(config.std or std)


# ---- semantic (2D) -------------------------------------------------------------------------------------

def _make_images(config: DataConfig, split: str, train: bool, transform: Callable | None) -> Dataset:
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
    if config.name in BENCHMARK_READERS:
        _require(config, "root")
        return BENCHMARK_READERS[config.name](config.root, split, ignore_index=config.ignore_index,
                                              transform=transform)
    images, masks = _folder_keys(config, split, "images", "masks")
    _require(config, images)
    if config.classes is None:
        raise PixelsegError("data.classes must list the class names for data.name 'folder'")
    masks_dir = getattr(config, masks)  # absent: a prediction-only set of images
    return SegmentationFolder(Path(getattr(config, images)), Path(masks_dir) if masks_dir is not None else None,
                              classes=config.classes, palette=config.palette,
                              ignore_index=config.ignore_index, image_mode=config.image_mode,
                              transform=transform)


# ---- volumetric (3D) -----------------------------------------------------------------------------------

def _make_volumes(config: DataConfig, split: str, train: bool, transform: Callable | None) -> Dataset:
    if config.name == "synthetic_volumes":
        count = config.num_samples if train else config.val_samples
        seed = config.seed * len(SYNTHETIC_VOLUME_SPLITS) + SYNTHETIC_VOLUME_SPLITS[split]
        return SyntheticVolumes(count, size=(config.image_size,) * 3, seed=seed, transform=transform)
    if config.name == "isbi2012_volume":
        _require(config, "root")
        return ISBI2012Volume(config.root, split, transform=transform)
    if config.name in ("medical", "promise12"):
        _require(config, "root")
        if config.name == "medical" and config.classes is None:
            raise PixelsegError("data.classes must list the class names for data.name 'medical' "
                                "(background first; 'promise12' knows its own)")
        classes = PROMISE12_CLASSES if config.name == "promise12" else config.classes
        return MedicalVolumes(config.root, split, classes=classes, palette=config.palette,
                              ignore_index=config.ignore_index, transform=transform)
    images, labels = _folder_keys(config, split, "images", "masks")
    _require(config, images, labels)
    if config.classes is None:
        raise PixelsegError("data.classes must list the class names for data.name 'volumes'")
    return VolumeFolder(Path(getattr(config, images)), Path(getattr(config, labels)), classes=config.classes,
                        palette=config.palette, transform=transform, ignore_index=config.ignore_index)


def _volume_info(config: DataConfig, val: Dataset) -> DatasetInfo:
    channels = int(getattr(val, "in_channels", 0) or val.load(0)[0].shape[0])
    palette = getattr(val, "palette", None) or default_palette(len(val.classes))
    return DatasetInfo(classes=list(val.classes), palette=[list(c) for c in palette], in_channels=channels,
                       image_mode="L" if channels == 1 else "volume", ignore_index=config.ignore_index,
                       mean=[0.0] * channels, std=[1.0] * channels, spatial_dims=3)


# ---- instance ------------------------------------------------------------------------------------------

def _make_instances(config: DataConfig, split: str, *, train: bool) -> Dataset:
    if config.name == "synthetic_instances":
        count = config.num_samples if train else config.val_samples
        return SyntheticInstances(count, size=config.image_size, seed=config.seed, split=split)
    if config.name == "coco_instances":
        annotations, images = _folder_keys(config, split, "annotations", "images")
        _require(config, annotations, images)
        return CocoInstances(getattr(config, annotations), getattr(config, images))
    _require(config, "root")
    if config.classes is not None and len(config.classes) != 2:
        raise PixelsegError(f"data.classes of 'instance_folder' names two classes, background first, "
                            f"not {config.classes}")
    class_name = config.classes[1] if config.classes else "pedestrian"
    if split == "test":  # its own folders (under root or absolute), all of them
        return InstanceMaskFolder(config.root, images_dir=config.test_images, masks_dir=config.test_masks,
                                  class_name=class_name, split="all")
    return InstanceMaskFolder(config.root, images_dir=config.images_subdir or "PNGImages",
                              masks_dir=config.masks_subdir or "PedMasks", class_name=class_name,
                              split=split, val_count=config.val_count)


def _instance_info(config: DataConfig, train: Dataset, val: Dataset) -> DatasetInfo:
    """Labels are defined by the training set; the validation set must use the same categories."""
    if (val.class_names, val.category_ids) != (train.class_names, train.category_ids):
        raise PixelsegError(f"data.name '{config.name}': the validation categories {val.class_names[1:]} "
                            f"differ from the training categories {train.class_names[1:]}")
    classes = list(train.class_names)
    palette = [list(c) for c in config.palette] if config.palette else \
        [list(c) for c in default_palette(len(classes))]
    # Images come as [0, 1] tensors; detection models normalise them themselves.
    return DatasetInfo(classes=classes, palette=palette, in_channels=3, image_mode="RGB",
                       ignore_index=config.ignore_index, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
                       category_ids=list(train.category_ids))


# ---- panoptic ------------------------------------------------------------------------------------------

def _make_panoptic(config: DataConfig, split: str, *, train: bool) -> Dataset:
    count = config.num_samples if train else config.val_samples
    return SyntheticPanoptic(count, size=config.image_size, seed=config.seed, split=split,
                             hflip=train and config.hflip)


def _panoptic_info(config: DataConfig, val: SyntheticPanoptic) -> DatasetInfo:
    """The panoptic categories (things, then stuff) with their COCO ids and thing flags."""
    classes = [str(c["name"]) for c in val.categories]
    palette = [list(c) for c in config.palette] if config.palette else \
        [list(c) for c in default_palette(len(classes))]
    return DatasetInfo(classes=classes, palette=palette, in_channels=3, image_mode="RGB",
                       ignore_index=config.ignore_index, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
                       category_ids=[int(c["id"]) for c in val.categories],
                       isthing=[bool(c["isthing"]) for c in val.categories])


# ---- keypoints -----------------------------------------------------------------------------------------

def _make_keypoints(config: DataConfig, split: str, *, train: bool) -> SyntheticKeypoints:
    # No flip: a left-right flip would swap the "left" and "right" keypoints (data.hflip is refused).
    # The set draws train and val from its seed; "test" is the val stream of the next seed (unseen images).
    return SyntheticKeypoints(config.num_samples if train else config.val_samples, size=config.image_size,
                              seed=config.seed + (split == "test"), split="train" if train else "val")


def _keypoint_info(config: DataConfig, val: SyntheticKeypoints) -> DatasetInfo:
    """One object class (the triangle) and its named keypoints."""
    palette = [list(c) for c in config.palette] if config.palette else [list(c) for c in default_palette(2)]
    return DatasetInfo(classes=["background", "triangle"], palette=palette, in_channels=3, image_mode="RGB",
                       ignore_index=config.ignore_index, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
                       category_ids=[0, 1], keypoint_names=list(val.keypoint_names))


# ---- checking a local copy -----------------------------------------------------------------------------

CHECKABLE = (*BENCHMARK_READERS, "medical", "promise12")


def check_dataset(name: str, root: str | Path, classes: list[str] | None = None) -> list[str]:
    """Every problem of a local copy of benchmark ``name`` under ``root``, one line each: files its split
    lists name but that are missing, images without labels (or labels without images), unreadable files and
    label values outside the benchmark's classes. Each sample of each split is read once."""
    if name not in CHECKABLE:
        raise PixelsegError(f"no check for dataset '{name}'; checkable: {', '.join(CHECKABLE)}"
                            f"{closest(name, CHECKABLE)}")
    problems: list[str] = []
    seen: set[Path] = set()
    for split in BENCHMARK_SPLITS[name][0]:
        try:
            if name in BENCHMARK_READERS:
                dataset = BENCHMARK_READERS[name](root, split, strict=False)
            else:
                dataset = MedicalVolumes(root, split, classes=classes or PROMISE12_CLASSES, strict=False)
        except PixelsegError as err:
            problems.append(f"{split}: {err}")
            continue
        for line in dataset.problems:  # a file missing from two lists (train, trainval) is one problem
            if line.split(": ")[0] not in {known.split(": ")[0] for known in problems}:
                problems.append(line)
        for index, (image, _) in enumerate(dataset.samples):
            if image in seen:
                continue
            seen.add(image)
            try:
                dataset.load(index)
            except PixelsegError as err:
                problems.append(str(err))
    return problems
