"""A built-in panoptic set: textured "stuff" regions behind countable "things", deterministic by seed.

Every image is tiled into a few Voronoi cells, each filled with one of three textures (``stripes``,
``checks``, ``dots``: the class is the texture, the colours are random); two cells of the same texture are
one stuff segment, as in COCO panoptic. On top lie 1-5 things (``ellipse``, ``rectangle``, ``triangle``: the
shapes of :mod:`pixelseg.data.instances`, in a flat shaded colour), touching or occluding each other. A thing
whose visible part is smaller than ``min_visible`` pixels is left unlabelled: its pixels are void.

Sample ``(image, target)`` in torchvision's detection format plus the panoptic parts:

- ``boxes``, ``labels`` (1..3, the things), ``masks``, ``area``, ``iscrowd``, ``image_id``: the instances;
- ``semantic`` ``(H, W)`` int64, the semantic branch's target as in Panoptic FPN (Kirillov et al., CVPR 2019,
  arXiv:1901.02446, section 3.2): 0 for every thing pixel (one "other" class), ``k`` for the k-th stuff
  class, ``ignore_index`` (255) for void;
- ``panoptic`` ``(H, W)`` int64 segment ids (0 = void) and ``segments`` ``(S, 3)`` int64 rows ``id,
  category_id, iscrowd``: the ground truth for panoptic quality, in COCO's terms (category ids 1-3 things,
  4-6 stuff; :meth:`SyntheticPanoptic.annotation` gives it as a ``PanopticAnnotation``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..io.images import image_to_tensor
from .coco_panoptic import PanopticAnnotation, SemanticInstances, from_semantic_instances
from .instances import _shape, horizontal_flip, make_target, place_object, visible_masks

THING_CLASSES = ["ellipse", "rectangle", "triangle"]
STUFF_CLASSES = ["stripes", "checks", "dots"]
# COCO panoptic categories: things 1-3, stuff 4-6.
CATEGORIES = [{"id": index + 1, "name": name, "isthing": int(index < len(THING_CLASSES))}
              for index, name in enumerate(THING_CLASSES + STUFF_CLASSES)]
THINGS_LABEL = 0  # the semantic target's one class for all thing pixels
IGNORE = 255

Target = dict[str, Tensor]


def _texture(kind: int, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """An ``(H, W)`` pattern in [0, 1]: 0 stripes (oriented sinusoid), 1 checks, 2 dots."""
    period = rng.uniform(0.06, 0.12) * size
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    if kind == 1:
        return ((np.floor(xs / period) + np.floor(ys / period)) % 2).astype(np.float32)
    cy, cx = (ys % period) - period / 2, (xs % period) - period / 2
    return (cy ** 2 + cx ** 2 <= (0.3 * period) ** 2).astype(np.float32)


def render_panoptic(seed: int, size: int = 128, max_objects: int = 5, min_visible: int = 40
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One sample: RGB uint8 ``(size, size, 3)``, the stuff map ``(size, size)`` (stuff index 0..2 of every
    pixel, -1 under a thing too small to count), the things' boolean masks ``(N, size, size)`` and their
    labels 1..3 ``(N,)``."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    cells = rng.uniform(0, size, (int(rng.integers(2, 5)), 2))
    cell = np.argmin((ys[..., None] - cells[:, 0]) ** 2 + (xs[..., None] - cells[:, 1]) ** 2, axis=-1)
    stuff = rng.integers(0, len(STUFF_CLASSES), len(cells))[cell]
    image = np.zeros((size, size, 3), dtype=np.float32)
    for kind in np.unique(stuff).tolist():
        low, high = rng.uniform(0.0, 0.5, 3), rng.uniform(0.5, 1.0, 3)
        pattern = _texture(kind, ys, xs, rng, size)[..., None]
        image = np.where((stuff == kind)[..., None], low + (high - low) * pattern, image)
    owner = np.full((size, size), -1, dtype=np.int64)
    labels: list[int] = []
    centres: list[tuple[float, float, float]] = []
    for index in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(1, len(THING_CLASSES) + 1))
        ry, rx, cy, cx = place_object(rng, size, centres)
        inside = _shape(kind, ys, xs, cy, cx, ry, rx, rng.uniform(0, np.pi))
        shade = 1.0 + 0.25 * ((xs - cx) / size)[..., None]
        image = np.where(inside[..., None], rng.uniform(0.1, 0.9, 3) * shade, image)
        owner[inside] = index
        labels.append(kind)
        centres.append((cy, cx, max(ry, rx)))
    masks, keep = visible_masks(owner, len(labels), min_visible)
    stuff = np.where(masks[~keep].any(axis=0), -1, stuff)  # too small to count: void
    image = (np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1) * 255).astype(np.uint8)
    return image, stuff, masks[keep], np.asarray(labels, dtype=np.int64)[keep]


def panoptic_target(stuff: np.ndarray, masks: np.ndarray, labels: np.ndarray, image_id: int) -> Target:
    """The detection target plus ``semantic``, ``panoptic`` and ``segments`` (see the module)."""
    target = make_target(masks, labels, image_id)
    things = masks.any(axis=0) if len(masks) else np.zeros(stuff.shape, dtype=bool)
    semantic = np.where(things, THINGS_LABEL, np.where(stuff < 0, IGNORE, stuff + 1))
    annotation = panoptic_annotation(stuff, masks, labels, image_id)
    segments = [(int(s["id"]), int(s["category_id"]), int(s["iscrowd"])) for s in annotation.segments_info]
    target["semantic"] = torch.from_numpy(semantic.astype(np.int64))
    target["panoptic"] = torch.from_numpy(annotation.ids.astype(np.int64))
    target["segments"] = torch.tensor(segments, dtype=torch.int64).reshape(len(segments), 3)
    return target


def panoptic_annotation(stuff: np.ndarray, masks: np.ndarray, labels: np.ndarray, image_id: int
                        ) -> PanopticAnnotation:
    """The COCO panoptic ground truth of one sample (stuff segments first, then the things)."""
    semantic = np.where(stuff < 0, 0, stuff + 1 + len(THING_CLASSES))  # category ids, 0 = void
    categories = {c["id"]: c for c in CATEGORIES}
    from_masks = masks.astype(bool).reshape(len(masks), *stuff.shape)
    parts = SemanticInstances(semantic, from_masks, labels.astype(np.int64), np.zeros(len(labels), dtype=bool))
    return from_semantic_instances(parts, categories, file_name=f"synthetic_{image_id:06d}.png", image_id=image_id)


def flip_panoptic(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror an image, its instances and its semantic and panoptic maps left to right."""
    image, flipped = horizontal_flip(image, target)
    for key in ("semantic", "panoptic"):
        flipped[key] = target[key].flip(-1)
    return image, flipped


class SyntheticPanoptic(Dataset):
    """The synthetic panoptic set (see the module); sample ``i`` of split ``s`` is a pure function of
    ``(seed, s, i)``. ``hflip`` flips each sample left to right with probability ½ (PyTorch's global
    generator, so seeded runs replay it)."""

    thing_names = THING_CLASSES
    stuff_names = STUFF_CLASSES
    categories = CATEGORIES
    class_names = ["background", *THING_CLASSES]  # the detector's labels

    def __init__(self, length: int = 512, *, size: int = 128, seed: int = 0,
                 split: Literal["train", "val", "test"] = "train", max_objects: int = 5, hflip: bool = False) -> None:
        self.length, self.size, self.max_objects, self.hflip = length, size, max_objects, hflip
        self.base_seed = seed * 10_000_019 + {"train": 0, "val": 1_000_003, "test": 2_000_003}[split] + 77
        self.category_ids = [c["id"] for c in CATEGORIES]

    def __len__(self) -> int:
        return self.length

    def image_info(self, index: int) -> dict[str, Any]:
        return {"id": index, "file_name": f"synthetic_{index:06d}.png", "height": self.size, "width": self.size}

    def annotation(self, index: int) -> PanopticAnnotation:
        _, stuff, masks, labels = render_panoptic(self.base_seed + index, self.size, self.max_objects)
        return panoptic_annotation(stuff, masks, labels, index)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, stuff, masks, labels = render_panoptic(self.base_seed + index, self.size, self.max_objects)
        sample = image_to_tensor(image), panoptic_target(stuff, masks, labels, index)
        if self.hflip and torch.rand(()) < 0.5:
            return flip_panoptic(*sample)
        return sample
