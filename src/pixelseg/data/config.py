"""The ``data:`` section of an experiment config: which dataset, where, and how to augment it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Which dataset, where, and how to augment it.

    ``name``: ``shapes`` (built in), ``folder`` (``train_images``/``train_masks`` and
    ``val_images``/``val_masks``), ``camvid`` or ``isbi2012`` (``root``). Volumes for 3D models (V-Net):
    ``volumes`` (``.npy``/``.tif`` stacks in the same four folder keys, ``classes`` given),
    ``synthetic_volumes`` (built in: ``num_samples``/``val_samples`` cubes of side ``image_size``) and
    ``isbi2012_volume`` (``root``: the ISBI 2012 stack as one EM volume); they train on random
    ``patch_size`` [D, H, W] crops with ``hflip``/``vflip``/``rotate90`` in the plane and ``dflip``.
    """

    name: str = "shapes"
    root: str | None = None
    train_images: str | None = None
    train_masks: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    image_mode: str = "RGB"
    train_split: str = "train"
    val_split: str = "val"
    ignore_index: int = 255
    num_samples: int = 512  # shapes only
    val_samples: int = 64  # shapes only
    image_size: int = 128  # shapes only
    seed: int = 0  # shapes only
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
