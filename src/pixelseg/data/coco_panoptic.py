"""The COCO panoptic format (Kirillov et al., CVPR 2019; cocodataset.org/#format-data): read, write, convert.

- **PNG + JSON.** Each image's segmentation is an RGB PNG whose pixel holds a segment id,
  ``id = R + 256·G + 256²·B`` (0 = void, unlabelled), and the JSON's ``annotations`` give, per PNG
  (``file_name``), the ``segments_info``: ``id``, ``category_id``, ``iscrowd``, ``area``, ``bbox``.
  The PNGs lie in a folder named like the JSON without ``.json`` unless another is given.
- **Two channels.** The paper's own format: channel 0 holds the category id (0 = void), channel 1 the
  instance id of a thing (0 for stuff), channel 2 is 0. Instance 255 marks a crowd region, as in
  panopticapi's ``sample_data/panoptic_examples_2ch_format``. Read back, segments are numbered 1, 2, ... in
  (category, instance) order.
- **Semantic + instances.** A semantic map of category ids (0 = void) and the things as instance masks
  (``masks`` (N, H, W) bool, ``category_ids`` (N,), ``iscrowd`` (N,)). From them, every stuff category
  present in the semantic map is one segment, every instance one segment (instance pixels take the
  instance's category whatever the semantic map says there; thing pixels of the semantic map that no
  instance covers become void), numbered 1, 2, ... stuff first.

Bad input never ends in a traceback: an id in a PNG that its ``segments_info`` lacks (or the reverse), an
id listed twice, an unknown ``category_id``, a crowd flag on stuff, overlapping instance masks, a
missing PNG or JSON entry are each a one-line :class:`~pixelseg.errors.PixelsegError` naming the file and
the segment. An image with no segment at all (all void) is valid: it is read and written as it is, and as a
ground truth it adds nothing to panoptic quality (every predicted segment on it lies on void).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PixelsegError
from ..io.checkpoint import atomic_write_bytes
from ..io.images import read_mask

VOID = 0
CROWD_INSTANCE = 255  # the 2-channel format's instance id of a crowd region
Categories = Mapping[int, Mapping[str, Any]]  # category id -> COCO category (``isthing``, ``name``, ...)


@dataclass
class PanopticAnnotation:
    """One image's panoptic segmentation: segment ids per pixel and their COCO ``segments_info``."""

    ids: np.ndarray  # (H, W) int64, 0 is void
    segments_info: list[dict[str, Any]]  # "id", "category_id", "iscrowd" (and "area", "bbox" when written)
    file_name: str = ""  # the PNG's name, named in error messages
    image_id: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the JSON annotation, kept as they are


@dataclass
class SemanticInstances:
    """The same segmentation as a semantic map and the things' instance masks."""

    semantic: np.ndarray  # (H, W) int64 category ids, 0 is void
    masks: np.ndarray  # (N, H, W) bool
    category_ids: np.ndarray  # (N,) int64
    iscrowd: np.ndarray  # (N,) bool


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids ``R + 256·G + 256²·B`` of an ``(H, W, 3)`` array, as int64."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 colours of segment ids (each in ``0 .. 256³ − 1``)."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256 ** 3):
        raise ValueError(f"segment ids in {ids.min()}..{ids.max()} do not fit in 24 bits")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def as_categories(categories: Iterable[Mapping[str, Any]] | Categories) -> dict[int, Mapping[str, Any]]:
    """COCO categories (a list, or a mapping by id) as a mapping by id."""
    if isinstance(categories, Mapping):
        return {int(key): value for key, value in categories.items()}
    return {int(category["id"]): category for category in categories}


def check_annotation(annotation: PanopticAnnotation, categories: Categories | None = None) -> None:
    """Raise a one-line :class:`PixelsegError` naming the file and segment when the id map and
    ``segments_info`` disagree (either way), an id is listed twice or is 0, a category is unknown to
    ``categories``, or a stuff segment is marked crowd."""
    name = annotation.file_name
    listed: set[int] = set()
    for info in annotation.segments_info:
        for key in ("id", "category_id"):
            if key not in info:
                raise PixelsegError(f"a segment of segments_info has no '{key}': {dict(info)}", name)
        segment, category = int(info["id"]), int(info["category_id"])
        if segment == VOID:
            raise PixelsegError("segments_info lists segment id 0, which is void", name)
        if segment in listed:
            raise PixelsegError(f"segment {segment} is listed twice in segments_info", name)
        listed.add(segment)
        if categories is not None:
            if category not in categories:
                raise PixelsegError(f"segment {segment} has unknown category_id {category}", name)
            if info.get("iscrowd", 0) and not categories[category].get("isthing", 1):
                raise PixelsegError(f"segment {segment} is a crowd region of the stuff category {category}", name)
    present = set(np.unique(annotation.ids).tolist()) - {VOID}
    if present - listed:
        raise PixelsegError(f"segment {min(present - listed)} is in the PNG but not in segments_info", name)
    if listed - present:
        raise PixelsegError(f"segment {min(listed - present)} is in segments_info but not in the PNG", name)


def read_panoptic_png(path: str | Path, segments_info: Sequence[Mapping[str, Any]],
                      categories: Categories | None = None, image_id: int | str | None = None
                      ) -> PanopticAnnotation:
    """One PNG and its ``segments_info``, checked (:func:`check_annotation`)."""
    array = read_mask(path, what="panoptic PNG")
    if array.ndim != 3:
        raise PixelsegError("a panoptic PNG must be RGB (id = R + 256·G + 256²·B)", path)
    annotation = PanopticAnnotation(rgb_to_id(array), [dict(info) for info in segments_info], str(path), image_id)
    check_annotation(annotation, categories)
    return annotation


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PixelsegError("no such panoptic JSON file", path) from None
    except (OSError, ValueError) as err:
        raise PixelsegError(f"unreadable panoptic JSON ({str(err).splitlines()[0]})", path) from None


def read_panoptic(json_path: str | Path, png_folder: str | Path | None = None
                  ) -> tuple[list[PanopticAnnotation], dict[int, Mapping[str, Any]]]:
    """Every annotation of a COCO panoptic JSON with its PNG, and the categories by id."""
    json_path = Path(json_path)
    data = _read_json(json_path)
    if "annotations" not in data or "categories" not in data:
        raise PixelsegError("a COCO panoptic JSON needs 'annotations' and 'categories'", json_path)
    folder = Path(png_folder) if png_folder is not None else json_path.with_suffix("")
    categories = as_categories(data["categories"])
    annotations = []
    for entry in data["annotations"]:
        if "file_name" not in entry or "segments_info" not in entry:
            raise PixelsegError(f"annotation of image {entry.get('image_id')} has no file_name or segments_info",
                                json_path)
        annotation = read_panoptic_png(folder / entry["file_name"], entry["segments_info"], categories,
                                       entry.get("image_id"))
        annotation.extra = {key: value for key, value in entry.items()
                            if key not in ("file_name", "segments_info", "image_id")}
        annotations.append(annotation)
    return annotations, categories


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def segments_info_of(annotation: PanopticAnnotation) -> list[dict[str, Any]]:
    """``segments_info`` with ``area`` and ``bbox`` (x, y, w, h) measured on the id map."""
    ids = np.asarray(annotation.ids)
    present, inverse, areas = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(ids.shape)
    area = dict(zip(present.tolist(), areas.tolist(), strict=True))
    info = []
    for segment in annotation.segments_info:
        index = int(np.searchsorted(present, int(segment["id"])))
        info.append({**segment, "id": int(segment["id"]), "category_id": int(segment["category_id"]),
                     "iscrowd": int(segment.get("iscrowd", 0)), "area": int(area[int(segment["id"])]),
                     "bbox": _bbox(inverse == index)})
    return info


def write_panoptic(annotations: Sequence[PanopticAnnotation], categories: Iterable[Mapping[str, Any]] | Categories,
                   json_path: str | Path, png_folder: str | Path | None = None,
                   images: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Write the PNGs (named by each annotation's ``file_name``) and the JSON, each atomically; the
    annotations are checked first, so nothing half-valid is written."""
    json_path = Path(json_path)
    folder = Path(png_folder) if png_folder is not None else json_path.with_suffix("")
    by_id = as_categories(categories)
    for annotation in annotations:
        check_annotation(annotation, by_id)
    entries = []
    for annotation in annotations:
        name = Path(annotation.file_name).name
        atomic_write_bytes(folder / name, _png_bytes(id_to_rgb(annotation.ids)))
        entries.append({**annotation.extra, "image_id": annotation.image_id, "file_name": name,
                        "segments_info": segments_info_of(annotation)})
    document = {"images": list(images or []), "annotations": entries, "categories": list(by_id.values())}
    atomic_write_bytes(json_path, json.dumps(document).encode())


def read_two_channel(path: str | Path, categories: Categories, image_id: int | str | None = None
                     ) -> PanopticAnnotation:
    """A 2-channel PNG (category, instance; 255 = crowd) as a panoptic annotation, segments numbered 1, 2,
    ... in (category, instance) order. An unknown category is an error naming the file."""
    array = read_mask(path, what="2-channel panoptic PNG")
    if array.ndim != 3:
        raise PixelsegError("a 2-channel panoptic PNG must be RGB (category, instance, 0)", path)
    pairs = array[..., 0].astype(np.int64) * 256 + array[..., 1].astype(np.int64)
    values, inverse = np.unique(pairs, return_inverse=True)
    ids = np.zeros(len(values), dtype=np.int64)
    segments_info = []
    for index, value in enumerate(values.tolist()):
        category, instance = divmod(value, 256)
        if category == VOID:
            continue
        if category not in categories:
            raise PixelsegError(f"pixels of category {category} (instance {instance}): unknown category_id", path)
        thing = bool(categories[category].get("isthing", 1))
        ids[index] = len(segments_info) + 1
        segments_info.append({"id": int(ids[index]), "category_id": category,
                              "iscrowd": int(thing and instance == CROWD_INSTANCE)})
    annotation = PanopticAnnotation(ids[inverse.reshape(pairs.shape)], segments_info, str(path), image_id)
    check_annotation(annotation, categories)
    return annotation


def to_two_channel(annotation: PanopticAnnotation, categories: Categories) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 2-channel array: things numbered 0, 1, ... per category in id order, crowd
    regions 255, stuff 0."""
    check_annotation(annotation, categories)
    ids = np.asarray(annotation.ids)
    lookup_ids = np.array([VOID, *(int(s["id"]) for s in annotation.segments_info)], dtype=np.int64)
    order = np.argsort(lookup_ids)
    category = np.zeros(len(lookup_ids), dtype=np.int64)
    instance = np.zeros(len(lookup_ids), dtype=np.int64)
    counters: dict[int, int] = {}
    for row, info in sorted(enumerate(annotation.segments_info, start=1), key=lambda item: int(item[1]["id"])):
        cat = int(info["category_id"])
        if not 0 < cat < 256:
            raise PixelsegError(f"segment {info['id']}: category_id {cat} does not fit in one byte", annotation.file_name)
        category[row] = cat
        if info.get("iscrowd", 0):
            instance[row] = CROWD_INSTANCE
        elif categories[cat].get("isthing", 1):
            instance[row] = counters.get(cat, 0)
            counters[cat] = instance[row] + 1
            if instance[row] >= CROWD_INSTANCE:
                raise PixelsegError(f"segment {info['id']}: more than 255 instances of category {cat} do not fit "
                                    "the 2-channel format", annotation.file_name)
    rows = order[np.searchsorted(lookup_ids[order], ids)]
    return np.stack([category[rows], instance[rows], np.zeros_like(ids)], axis=-1).astype(np.uint8)


def write_two_channel(annotation: PanopticAnnotation, categories: Categories, path: str | Path) -> None:
    """Write :func:`to_two_channel` as a PNG, atomically."""
    atomic_write_bytes(path, _png_bytes(to_two_channel(annotation, categories)))


def to_semantic_instances(annotation: PanopticAnnotation, categories: Categories) -> SemanticInstances:
    """The semantic map (category id of every pixel, 0 = void) and the things as instance masks."""
    check_annotation(annotation, categories)
    ids = np.asarray(annotation.ids)
    lookup = {int(s["id"]): s for s in annotation.segments_info}
    present = np.array([VOID, *sorted(lookup)], dtype=np.int64)
    category = np.array([VOID, *(int(lookup[s]["category_id"]) for s in present[1:].tolist())], dtype=np.int64)
    semantic = category[np.searchsorted(present, ids)]
    things = [s for s in annotation.segments_info if categories[int(s["category_id"])].get("isthing", 1)]
    height, width = ids.shape
    masks = np.stack([ids == int(s["id"]) for s in things]) if things else np.zeros((0, height, width), bool)
    return SemanticInstances(semantic, masks, np.array([int(s["category_id"]) for s in things], dtype=np.int64),
                             np.array([bool(s.get("iscrowd", 0)) for s in things], dtype=bool))


def from_semantic_instances(parts: SemanticInstances, categories: Categories, file_name: str = "",
                            image_id: int | str | None = None) -> PanopticAnnotation:
    """A panoptic annotation from a semantic map and instance masks (see the module's rules); overlapping
    instances, unknown categories and instances of stuff categories are errors naming the instances."""
    semantic = np.asarray(parts.semantic).astype(np.int64)
    masks = np.asarray(parts.masks).astype(bool)
    if masks.shape[1:] != semantic.shape or len(masks) != len(parts.category_ids) != len(parts.iscrowd):
        raise PixelsegError(f"{len(masks)} masks of shape {masks.shape[1:]}, {len(parts.category_ids)} categories, "
                            f"{len(parts.iscrowd)} crowd flags for a semantic map of shape {semantic.shape}",
                            file_name)
    coverage = masks.sum(0)
    if masks.size and coverage.max() > 1:
        y, x = np.argwhere(coverage > 1)[0]
        first, second = np.flatnonzero(masks[:, y, x])[:2]
        raise PixelsegError(f"instances {first} and {second} overlap (pixel x={x}, y={y}); a panoptic "
                            "segmentation needs disjoint segments", file_name)
    ids = np.zeros(semantic.shape, dtype=np.int64)
    segments_info: list[dict[str, Any]] = []
    for category in np.unique(semantic).tolist():
        if category == VOID:
            continue
        if category not in categories:
            raise PixelsegError(f"the semantic map holds unknown category_id {category}", file_name)
        if categories[category].get("isthing", 1):
            continue
        region = (semantic == category) & (coverage == 0)
        if region.any():
            segments_info.append({"id": len(segments_info) + 1, "category_id": category, "iscrowd": 0})
            ids[region] = len(segments_info)
    for index, (mask, category, crowd) in enumerate(zip(masks, parts.category_ids.tolist(), parts.iscrowd.tolist(),
                                                        strict=True)):
        if category not in categories or not categories[category].get("isthing", 1):
            what = "unknown" if category not in categories else "a stuff"
            raise PixelsegError(f"instance {index} has {what} category_id {category}", file_name)
        if not mask.any():
            raise PixelsegError(f"instance {index} has an empty mask", file_name)
        segments_info.append({"id": len(segments_info) + 1, "category_id": int(category), "iscrowd": int(crowd)})
        ids[mask] = len(segments_info)
    return PanopticAnnotation(ids, segments_info, file_name, image_id)
