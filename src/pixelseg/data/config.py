"""The ``data:`` section of an experiment config: which dataset, where, and how to augment it."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PixelsegError


@dataclass
class AugmentConfig:
    """Training-time augmentation of 2D images; every field off by default except ``hflip``."""

    crop_size: int | None = None
    scale_range: tuple[float, float] | None = None
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    color_jitter: float = 0.0
    elastic_sigma: float = 0.0


@dataclass
class DataConfig:
    """Which dataset, where, and how to augment it; ``name`` picks the dataset (and so the task).

    Semantic (2D): ``shapes`` (built in: ``num_samples``/``val_samples`` images of side ``image_size``),
    ``folder`` (``train_images``/``train_masks``, ``val_images``/``val_masks`` and, for a held-out
    ``test`` split, ``test_images``/``test_masks``; ``classes`` given; a split whose ``*_masks`` key is
    absent is a prediction-only set, refused for training and statistics), ``camvid`` or ``isbi2012``
    (``root``). The benchmarks, each read from ``root`` in its official layout with its own classes,
    palette, ignore rule and splits: ``voc`` (train/val/trainval), ``voc_aug`` (train = SBD train_aug,
    val), ``cityscapes``, ``ade20k``, ``coco_stuff`` (train/val), ``drive`` (train/val/trainval/test)
    and ``weizmann_horse`` (train/val/test/all); see their modules in ``pixelseg.data``.

    Volumetric (3D models such as V-Net): ``volumes`` (``.npy``/``.tif`` stacks in the same four folder
    keys, ``classes`` given), ``synthetic_volumes`` (built in: cubes of side ``image_size``) and
    ``isbi2012_volume`` (``root``: the ISBI 2012 stack as one EM volume); ``volumes`` has a ``test``
    split in ``test_images``/``test_masks``. ``medical`` (NIfTI / MetaImage cases under ``root``,
    ``classes`` given) and ``promise12`` (the same reader, background/prostate) split train/val/all. They train on random
    ``patch_size`` [D, H, W] crops with ``hflip``/``vflip``/``rotate90`` in the plane and ``dflip``.

    Instance: ``synthetic_instances`` (built in: ``num_samples``/``val_samples`` images of side
    ``image_size``), ``coco_instances`` (``train_annotations``/``val_annotations`` COCO JSON files with
    the image folders ``train_images``/``val_images``; ``test_annotations``/``test_images`` give a
    ``test`` split) and ``instance_folder`` (``root`` in the Penn-Fudan layout,
    ``images_subdir``/``masks_subdir``; the last ``val_count`` images validate; ``test_images``/
    ``test_masks``, folders under ``root`` or absolute, give a ``test`` split; ``classes``, if given, are
    ``[background, <object class>]``).

    Splits: every dataset has ``train`` and ``val``; ``test`` is the held-out split to score once at
    the end (built-in synthetic sets draw it from their own seed, ``val_samples`` of them; CamVid reads
    its SegNet test frames; folder datasets need the ``test_*`` keys; ISBI 2012 has none, see
    ``pixelseg.data.build``). Values out of range are refused when the config is loaded, in one line
    naming the key and its range.
    """

    name: str = "shapes"
    root: str | None = None  # camvid, isbi2012, instance_folder and the benchmarks (voc, cityscapes, ...)
    train_images: str | None = None
    train_masks: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    test_images: str | None = None  # folder, volumes, instance_folder, coco_instances: the test split
    test_masks: str | None = None  # folder, volumes, instance_folder: the test split's masks
    train_annotations: str | None = None  # coco_instances: COCO JSON of the training images
    val_annotations: str | None = None  # coco_instances: COCO JSON of the validation images
    test_annotations: str | None = None  # coco_instances: COCO JSON of the test images (test_images)
    images_subdir: str | None = None  # instance_folder: images under root (default PNGImages)
    masks_subdir: str | None = None  # instance_folder: instance-id masks under root (default PedMasks)
    val_count: int = 50  # instance_folder: the last val_count images (in name order) validate
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    image_mode: str = "RGB"
    train_split: str = "train"
    val_split: str = "val"
    ignore_index: int = 255
    num_samples: int = 512  # built-in sets: training samples
    val_samples: int = 64  # built-in sets: validation samples
    image_size: int = 128  # built-in sets: side of an image (or cube)
    seed: int = 0  # built-in sets
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_size: int | None = None
    patch_size: list[int] | None = None  # volumes: random training crops [D, H, W]
    dflip: bool = False  # volumes: random flips along the depth
    scale_range: list[float] | None = None
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    color_jitter: float = 0.0
    elastic_sigma: float = 0.0
    repeats: int = 1  # the training set is seen this many times per epoch (fresh augmentation each time)
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: int = 0

    def __post_init__(self) -> None:
        """Refuse values out of range, in one line naming the key and the range."""
        for key, low in (("batch_size", 1), ("val_batch_size", 1), ("num_workers", 0), ("repeats", 1),
                         ("image_size", 8), ("num_samples", 1), ("val_samples", 1), ("val_count", 1),
                         ("crop_size", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise PixelsegError(f"data.{key} must be at least {low}, got {value}")
        for key in ("color_jitter", "elastic_sigma"):
            if getattr(self, key) < 0:
                raise PixelsegError(f"data.{key} must be 0 or more, got {getattr(self, key)}")
        if not (0 <= self.ignore_index <= 255 or self.ignore_index == -1):
            raise PixelsegError(f"data.ignore_index must be in 0..255 or -1, got {self.ignore_index}")
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
            raise PixelsegError(f"data.patch_size must be three positive sizes [D, H, W], got {self.patch_size}")
        if self.scale_range is not None and (len(self.scale_range) != 2 or min(self.scale_range) <= 0
                                             or self.scale_range[0] > self.scale_range[1]):
            raise PixelsegError(f"data.scale_range must be two positive numbers [low, high] with low <= high, "
                                f"got {self.scale_range}")
        if self.std is not None and min(self.std, default=1.0) <= 0:
            raise PixelsegError(f"data.std must be positive, got {self.std}")

    def augment(self) -> AugmentConfig:
        """The 2D training augmentation these settings ask for."""
        return AugmentConfig(crop_size=self.crop_size,
                             scale_range=tuple(self.scale_range) if self.scale_range else None,
                             hflip=self.hflip, vflip=self.vflip, rotate90=self.rotate90,
                             color_jitter=self.color_jitter, elastic_sigma=self.elastic_sigma)
