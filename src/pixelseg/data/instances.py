"""Instance-segmentation data: COCO JSON, Penn-Fudan folders and a synthetic set of touching shapes.

Every dataset returns ``(image, target)`` in torchvision's detection format: ``image`` a float tensor
``(3, H, W)`` in ``[0, 1]``, ``target`` a dict with ``boxes`` ``(N, 4)`` float ``x1, y1, x2, y2``
(pixel edges, so a one-pixel object at column 5 spans 5..6), ``labels`` ``(N,)`` int64 in
``1..num_classes-1`` (0 is background), ``masks`` ``(N, H, W)`` uint8, ``image_id``, ``area`` and
``iscrowd``. ``class_names`` lists the classes with ``"background"`` first, and ``category_ids`` maps a
label back to the category id of the source (COCO ids are not contiguous).

Bad annotations are never a crash deep inside: :class:`CocoInstances` checks the file when it opens
it and raises a one-line :class:`~pixelseg.errors.PixelsegError` naming the file and the annotation id
(or, with ``on_invalid="skip"``, leaves the annotation out with a warning naming both).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import PixelsegError
from ..io.images import (
    IMAGE_SUFFIXES,  # noqa: F401 (old name, see below)
    image_size,
    image_to_tensor,
    list_images,
    read_mask,
    read_rgb,
)

Target = dict[str, Tensor]

# Old names, still imported from here by instance/predict.py (IMAGE_SUFFIXES too) and
# models/keypoint_rcnn.py until they import pixelseg.io.images; remove with them.
_image_tensor, _read_rgb = image_to_tensor, read_rgb


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``x1, y1, x2, y2`` boxes (pixel edges) of ``(N, H, W)`` boolean masks; empty masks give 0s."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if len(rows):
            boxes[index] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def make_target(masks: np.ndarray, labels: np.ndarray, image_id: int,
                iscrowd: np.ndarray | None = None) -> Target:
    """A torchvision detection target from boolean ``(N, H, W)`` masks and their labels."""
    masks = masks.astype(bool)
    count = len(masks)
    return {
        "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(count, 4),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(count),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "area": torch.from_numpy(masks.sum(axis=(1, 2)).astype(np.float32)),
        "iscrowd": torch.as_tensor(np.zeros(count) if iscrowd is None else iscrowd, dtype=torch.int64),
    }


# ---- synthetic: touching and overlapping shapes -------------------------------------------------------

SYNTHETIC_CLASSES = ["background", "ellipse", "rectangle", "triangle"]


def _shape(kind: int, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, ry: float, rx: float,
           angle: float) -> np.ndarray:
    dy, dx = ys - cy, xs - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == 1:
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    if kind == 2:
        return (np.abs(u) <= rx * 0.85) & (np.abs(v) <= ry * 0.85)
    inside = np.ones_like(ys, dtype=bool)  # triangle: three half-planes around the centre
    for k in range(3):
        theta = angle + k * 2 * np.pi / 3
        inside &= (dx * np.cos(theta) / rx + dy * np.sin(theta) / ry) <= 0.55
    return inside


def place_object(rng: np.random.Generator, size: int,
                 placed: list[tuple[float, float, float]]) -> tuple[float, float, float, float]:
    """Radii and centre ``(ry, rx, cy, cx)`` of a new object: about half of the objects touch or overlap
    one of the ``placed`` ones (``(cy, cx, radius)``), the others land anywhere."""
    ry, rx = rng.uniform(0.08, 0.2, 2) * size
    if placed and rng.uniform() < 0.5:
        py, px, pr = placed[int(rng.integers(len(placed)))]
        direction = rng.uniform(0, 2 * np.pi)
        reach = (pr + max(ry, rx)) * rng.uniform(0.6, 1.0)
        cy, cx = py + reach * np.sin(direction), px + reach * np.cos(direction)
    else:
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
    return ry, rx, cy, cx


def visible_masks(owner: np.ndarray, count: int, min_visible: int) -> tuple[np.ndarray, np.ndarray]:
    """The masks of objects ``0 .. count - 1`` in the ``owner`` map (each pixel's topmost object, -1 for
    none), and which of them keep at least ``min_visible`` pixels."""
    masks = np.stack([owner == index for index in range(count)])
    return masks, masks.reshape(count, -1).sum(axis=1) >= min_visible


def render_instances(seed: int, size: int = 128, max_objects: int = 5,
                     min_visible: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic sample: RGB uint8 ``(size, size, 3)``, boolean masks ``(N, size, size)``, labels.

    Objects are placed so that about half of them touch or overlap an earlier one (a later object
    occludes an earlier one; the masks hold the visible parts). Colours are random, so the class is
    the shape alone.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3)
    image = base + 0.15 * (ys[..., None] / size - 0.5) * rng.uniform(-1, 1, 3)
    image = image + rng.normal(0, 0.03, (size, size, 3))
    owner = np.full((size, size), -1, dtype=np.int64)
    labels: list[int] = []
    centres: list[tuple[float, float, float]] = []
    for index in range(int(rng.integers(2, max_objects + 1))):
        kind = int(rng.integers(1, 4))
        ry, rx, cy, cx = place_object(rng, size, centres)
        inside = _shape(kind, ys, xs, cy, cx, ry, rx, rng.uniform(0, np.pi))
        colour = np.clip(rng.uniform(0.0, 1.0, 3) * 0.5 + (0.5 if (base.mean() < 0.5) else 0.0), 0, 1)
        shade = 1.0 + 0.25 * ((xs - cx) / size)[..., None]
        image = np.where(inside[..., None], colour * shade, image)
        owner[inside] = index
        labels.append(kind)
        centres.append((cy, cx, max(ry, rx)))
    masks, keep = visible_masks(owner, len(labels), min_visible)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return image, masks[keep], np.asarray(labels, dtype=np.int64)[keep]


class SyntheticInstances(Dataset):
    """Synthetic instance set (ellipses, rectangles, triangles that touch and overlap), needs no files.

    Sample ``i`` of split ``s`` is a pure function of ``(seed, s, i)``.
    """

    class_names = SYNTHETIC_CLASSES

    def __init__(self, length: int = 512, *, size: int = 128, seed: int = 0,
                 split: Literal["train", "val", "test"] = "train", max_objects: int = 5) -> None:
        self.length, self.size, self.max_objects = length, size, max_objects
        self.base_seed = seed * 10_000_019 + {"train": 0, "val": 1_000_003, "test": 2_000_003}[split]
        self.category_ids = list(range(len(self.class_names)))

    def __len__(self) -> int:
        return self.length

    def image_info(self, index: int) -> dict[str, Any]:
        return {"id": index, "file_name": f"synthetic_{index:06d}.png", "height": self.size, "width": self.size}

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, masks, labels = render_instances(self.base_seed + index, self.size, self.max_objects)
        return image_to_tensor(image), make_target(masks, labels, index)


# ---- Penn-Fudan layout: PNGImages/ + PedMasks/ -----------------------------------------------------

class InstanceMaskFolder(Dataset):
    """Images with instance-id PNGs in the Penn-Fudan layout (one object class).

    ``root/PNGImages/<name>.<ext>`` and ``root/PedMasks/<name>_mask.png`` (or ``<name>.png``): 0 is
    background and each value 1..N is one instance. ``class_name`` names the single class.
    ``split="train"`` keeps all images but the last ``val_count`` (in name order), ``"val"`` those
    last ``val_count``, ``"all"`` every image, so one folder gives disjoint training and validation sets.
    """

    def __init__(self, root: str | Path, *, images_dir: str = "PNGImages", masks_dir: str = "PedMasks",
                 class_name: str = "pedestrian", split: Literal["all", "train", "val"] = "all",
                 val_count: int = 0) -> None:
        self.root = Path(root)
        image_root, mask_root = self.root / images_dir, self.root / masks_dir
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise PixelsegError(f"folder not found (expected the Penn-Fudan layout {images_dir}/ and "
                                    f"{masks_dir}/)", folder)
        self.class_names = ["background", class_name]
        self.category_ids = [0, 1]
        self.pairs: list[tuple[Path, Path]] = []
        for image_path in list_images(image_root):
            candidates = [mask_root / f"{image_path.stem}_mask.png", mask_root / f"{image_path.stem}.png"]
            mask_path = next((c for c in candidates if c.is_file()), None)
            if mask_path is None:
                raise PixelsegError(f"no instance mask for this image (looked for {candidates[0].name})",
                                    image_path)
            self.pairs.append((image_path, mask_path))
        if not self.pairs:
            raise PixelsegError(f"no images in {images_dir}/", image_root)
        if split not in ("all", "train", "val"):
            raise PixelsegError(f"unknown split '{split}' (all, train or val)", self.root)
        if split != "all":
            if not 0 < val_count < len(self.pairs):
                raise PixelsegError(f"val_count must lie between 1 and {len(self.pairs) - 1} (the folder "
                                    f"holds {len(self.pairs)} images), got {val_count}", self.root)
            cut = len(self.pairs) - val_count
            self.pairs = self.pairs[:cut] if split == "train" else self.pairs[cut:]

    def __len__(self) -> int:
        return len(self.pairs)

    def image_info(self, index: int) -> dict[str, Any]:
        image_path, _ = self.pairs[index]
        width, height = image_size(image_path)
        return {"id": index, "file_name": image_path.name, "height": height, "width": width}

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_path, mask_path = self.pairs[index]
        image = read_rgb(image_path)
        ids = read_mask(mask_path, what="instance mask")
        if ids.ndim != 2:
            raise PixelsegError(f"instance mask must be single-channel (0 = background, 1..N = instances), "
                                f"got shape {ids.shape}", mask_path)
        if ids.shape != image.shape[:2]:
            raise PixelsegError(f"mask size {ids.shape[1]}x{ids.shape[0]} differs from image size "
                                f"{image.shape[1]}x{image.shape[0]} of {image_path.name}", mask_path)
        instance_ids = [value for value in np.unique(ids) if value != 0]
        masks = np.stack([ids == value for value in instance_ids]) if instance_ids else \
            np.zeros((0, *ids.shape), dtype=bool)
        return image_to_tensor(image), make_target(masks, np.ones(len(instance_ids), dtype=np.int64), index)


# ---- COCO JSON --------------------------------------------------------------------------------------

def _segments_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Whether segments a-b and c-d properly cross (arrays of points, broadcast)."""
    def orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
                       - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))
    return (orient(a, b, c) * orient(a, b, d) < 0) & (orient(c, d, a) * orient(c, d, b) < 0)


def polygon_self_intersects(coords: list[float]) -> bool:
    """True when two non-adjacent edges of the closed polygon ``[x0, y0, x1, y1, ...]`` cross."""
    points = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    count = len(points)
    if count < 4:
        return False
    starts, ends = points, np.roll(points, -1, axis=0)
    i, j = np.triu_indices(count, k=2)
    not_adjacent = ~((i == 0) & (j == count - 1))
    i, j = i[not_adjacent], j[not_adjacent]
    return bool(_segments_cross(starts[i], ends[i], starts[j], ends[j]).any())


class CocoInstances(Dataset):
    """Instances from a COCO-format JSON (polygons, RLE and uncompressed RLE, through pycocotools).

    ``on_invalid="error"`` (default) raises on the first bad annotation; ``"skip"`` leaves bad
    annotations out with one warning each. Checked when the file is opened: missing keys, unknown
    image or category ids, empty, degenerate or self-intersecting polygons, boxes of zero area, an image
``file_name`` that leaves ``image_dir`` (absolute, or through ``..``: always an error). Image
    size mismatches (the JSON's ``width``/``height`` against the file) are checked when an image loads.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *,
                 on_invalid: Literal["error", "skip"] = "error", include_crowd: bool = False) -> None:
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        self.on_invalid, self.include_crowd = on_invalid, include_crowd
        if not self.annotation_file.is_file():
            raise PixelsegError("annotation file not found", self.annotation_file)
        if not self.image_dir.is_dir():
            raise PixelsegError("image folder not found", self.image_dir)
        try:
            data = json.loads(self.annotation_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PixelsegError(f"not valid JSON ({err})", self.annotation_file) from None
        if not isinstance(data, dict):
            raise PixelsegError("a COCO file must hold a JSON object", self.annotation_file)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise PixelsegError(f"missing key '{key}' (a list)", self.annotation_file)

        self.images: list[dict[str, Any]] = []
        for record in data["images"]:
            self._require(record, ("id", "file_name", "width", "height"), "image", numbers=("id", "width", "height"))
            self._check_file_name(record)
            self.images.append(record)
        categories = []
        for record in data["categories"]:
            self._require(record, ("id", "name"), "category", numbers=("id",))
            categories.append(record)
        categories.sort(key=lambda c: int(c["id"]))
        self.class_names = ["background"] + [str(c["name"]) for c in categories]
        self.category_ids = [0] + [int(c["id"]) for c in categories]
        self._label_of = {int(c["id"]): label for label, c in enumerate(categories, start=1)}

        image_ids = {int(r["id"]): r for r in self.images}
        self.annotations: dict[int, list[dict[str, Any]]] = {int(r["id"]): [] for r in self.images}
        for record in data["annotations"]:
            problem = self._check_annotation(record, image_ids)
            if problem is None:
                self.annotations[int(record["image_id"])].append(record)
            elif on_invalid == "skip":
                warnings.warn(f"{self.annotation_file}: skipped annotation {record.get('id', '?')}: {problem}",
                              stacklevel=2)
            else:
                raise PixelsegError(f"annotation {record.get('id', '?')}: {problem}", self.annotation_file)

    def _require(self, record: Any, keys: tuple[str, ...], kind: str, numbers: tuple[str, ...] = ()) -> None:
        if not isinstance(record, dict):
            raise PixelsegError(f"every {kind} entry must be a JSON object, got {record!r:.40}",
                                self.annotation_file)
        missing = [key for key in keys if key not in record]
        if missing:
            raise PixelsegError(f"{kind} {record.get('id', '?')} is missing key(s) {', '.join(missing)}",
                                self.annotation_file)
        for key in numbers:
            if isinstance(record[key], bool) or not isinstance(record[key], int):
                raise PixelsegError(f"{kind} {record.get('id', '?')}: '{key}' must be an integer, "
                                    f"got {record[key]!r:.40}", self.annotation_file)

    def _check_file_name(self, record: dict[str, Any]) -> None:
        """Refuse a ``file_name`` that would be read from outside ``image_dir`` (absolute, or through '..')."""
        name = record["file_name"]
        if not isinstance(name, str) or not name.strip() or "\0" in name:
            raise PixelsegError(f"image {record['id']}: 'file_name' must be a file name, got {name!r:.60}",
                                self.annotation_file)
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor or ".." in parts:
            raise PixelsegError(f"image {record['id']}: file_name {name!r:.80} leaves the image folder "
                                "(absolute or through '..'); names must be relative to it", self.annotation_file)

    def _check_annotation(self, record: dict[str, Any], image_ids: dict[int, dict[str, Any]]) -> str | None:
        """The problem with one annotation, or None when it is usable."""
        self._require(record, ("id", "image_id", "category_id", "segmentation"), "annotation")
        try:
            return self._check_values(record, image_ids)
        except (TypeError, ValueError) as err:  # e.g. a string where a number belongs
            return f"malformed value ({err})"

    def _check_values(self, record: dict[str, Any], image_ids: dict[int, dict[str, Any]]) -> str | None:
        if int(record["image_id"]) not in image_ids:
            return f"unknown image id {record['image_id']}"
        if int(record["category_id"]) not in self._label_of:
            return f"unknown category id {record['category_id']}"
        bbox = record.get("bbox")
        if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4):
            return f"bbox {bbox} must be [x, y, width, height]"
        if bbox is not None and (float(bbox[2]) <= 0 or float(bbox[3]) <= 0):
            return f"box {bbox} has zero area"
        segmentation = record["segmentation"]
        if isinstance(segmentation, list):
            if not segmentation:
                return "empty polygon list"
            for polygon in segmentation:
                if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                    return "polygon needs at least 3 points (6 numbers, x and y pairs)"
                if polygon_self_intersects(polygon):
                    return "polygon intersects itself"
                x, y = np.asarray(polygon, dtype=np.float64).reshape(-1, 2).T
                if abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 1e-9:  # shoelace
                    return "polygon has zero area"
        elif isinstance(segmentation, dict):
            if "counts" not in segmentation or "size" not in segmentation:
                return "RLE segmentation needs 'counts' and 'size'"
            image = image_ids[int(record["image_id"])]
            if list(segmentation["size"]) != [image["height"], image["width"]]:
                return (f"RLE size {segmentation['size']} differs from the image's "
                        f"{[image['height'], image['width']]}")
        else:
            return "segmentation must be a polygon list or an RLE object"
        return None

    def __len__(self) -> int:
        return len(self.images)

    def image_info(self, index: int) -> dict[str, Any]:
        record = self.images[index]
        return {"id": int(record["id"]), "file_name": record["file_name"], "height": int(record["height"]),
                "width": int(record["width"])}

    def decode(self, record: dict[str, Any], height: int, width: int) -> np.ndarray:
        """The boolean ``(height, width)`` mask of one annotation (polygons or RLE)."""
        from pycocotools import mask as mask_utils

        segmentation = record["segmentation"]
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        return mask_utils.decode(rle).astype(bool)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        info = self.image_info(index)
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise PixelsegError(f"image {info['id']} listed in {self.annotation_file.name} is missing", path)
        image = read_rgb(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise PixelsegError(f"image is {image.shape[1]}x{image.shape[0]} but {self.annotation_file.name} "
                                f"says {info['width']}x{info['height']}", path)
        records = [r for r in self.annotations[info["id"]] if self.include_crowd or not r.get("iscrowd", 0)]
        masks = np.stack([self.decode(r, info["height"], info["width"]) for r in records]) if records else \
            np.zeros((0, info["height"], info["width"]), dtype=bool)
        labels = np.asarray([self._label_of[int(r["category_id"])] for r in records], dtype=np.int64)
        crowd = np.asarray([int(r.get("iscrowd", 0)) for r in records], dtype=np.int64)
        return image_to_tensor(image), make_target(masks, labels, info["id"], crowd)


def horizontal_flip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror an image and its instances (masks and boxes) left to right."""
    width = image.shape[-1]
    flipped = dict(target)
    flipped["masks"] = target["masks"].flip(-1)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    flipped["boxes"] = boxes
    return image.flip(-1), flipped


class RandomFlipInstances(Dataset):
    """Training augmentation of an instance dataset: each image and its instances flipped left to right
    with probability ½ (Mask R-CNN's only augmentation). The draw uses PyTorch's global generator, so a
    seeded run — and a resumed one — replays the same flips. Other attributes come from ``dataset``."""

    def __init__(self, dataset: Dataset, p: float = 0.5) -> None:
        self.dataset, self.p = dataset, p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "p"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self.dataset[index]
        if torch.rand(()) < self.p:
            return horizontal_flip(image, target)
        return image, target


def collate_detection(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Detection batches are lists: images differ in size and targets in length."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
