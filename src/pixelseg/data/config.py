"""The ``data:`` section of an experiment config: which dataset, where, and how to augment it."""

from __future__ import annotations

from dataclasses import dataclass


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
    ``folder`` (``train_images``/``train_masks`` and ``val_images``/``val_masks``, ``classes`` given),
    ``camvid`` or ``isbi2012`` (``root``).

    Volumetric (3D models such as V-Net): ``volumes`` (``.npy``/``.tif`` stacks in the same four folder
    keys, ``classes`` given), ``synthetic_volumes`` (built in: cubes of side ``image_size``) and
    ``isbi2012_volume`` (``root``: the ISBI 2012 stack as one EM volume); they train on random
    ``patch_size`` [D, H, W] crops with ``hflip``/``vflip``/``rotate90`` in the plane and ``dflip``.

    Instance: ``synthetic_instances`` (built in: ``num_samples``/``val_samples`` images of side
    ``image_size``), ``coco_instances`` (``train_annotations``/``val_annotations`` COCO JSON files with
    the image folders ``train_images``/``val_images``) and ``instance_folder`` (``root`` in the
    Penn-Fudan layout, ``images_subdir``/``masks_subdir``; the last ``val_count`` images validate;
    ``classes``, if given, are ``[background, <object class>]``).
    """

    name: str = "shapes"
    root: str | None = None
    train_images: str | None = None
    train_masks: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    train_annotations: str | None = None  # coco_instances: COCO JSON of the training images
    val_annotations: str | None = None  # coco_instances: COCO JSON of the validation images
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

    def augment(self) -> AugmentConfig:
        """The 2D training augmentation these settings ask for."""
        return AugmentConfig(crop_size=self.crop_size,
                             scale_range=tuple(self.scale_range) if self.scale_range else None,
                             hflip=self.hflip, vflip=self.vflip, rotate90=self.rotate90,
                             color_jitter=self.color_jitter, elastic_sigma=self.elastic_sigma)
