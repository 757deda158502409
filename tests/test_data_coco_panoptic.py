"""The COCO panoptic format on panopticapi's sample: PNG + JSON, the 2-channel variant, semantic + instance
annotations (checked against the sample's own detection-format JSON), round trips and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pixelseg.data.coco_panoptic import (
    PanopticAnnotation,
    SemanticInstances,
    from_semantic_instances,
    id_to_rgb,
    read_panoptic,
    read_panoptic_png,
    read_two_channel,
    rgb_to_id,
    to_semantic_instances,
    to_two_channel,
    write_panoptic,
    write_two_channel,
)
from pixelseg.errors import PixelsegError


@pytest.fixture
def sample(coco_sample_root: Path):
    annotations, categories = read_panoptic(coco_sample_root / "panoptic_examples.json",
                                            coco_sample_root / "panoptic_examples")
    return annotations, categories


def _same_segmentation(a: PanopticAnnotation, b: PanopticAnnotation) -> None:
    """The same partition of the pixels into segments (ids may differ), with the same category and crowd
    flag per segment."""
    assert a.ids.shape == b.ids.shape
    pairs = np.unique(np.stack([a.ids.ravel(), b.ids.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    info_a = {int(s["id"]): s for s in a.segments_info}
    info_b = {int(s["id"]): s for s in b.segments_info}
    for first, second in pairs.T.tolist():
        if first == 0 or second == 0:
            assert first == second == 0
            continue
        assert info_a[first]["category_id"] == info_b[second]["category_id"]
        assert bool(info_a[first].get("iscrowd", 0)) == bool(info_b[second].get("iscrowd", 0))


def test_segment_ids_are_r_plus_256_g_plus_65536_b():
    rgb = np.array([[[1, 2, 3], [255, 255, 255]]], dtype=np.uint8)
    assert rgb_to_id(rgb).tolist() == [[1 + 2 * 256 + 3 * 65536, 256 ** 3 - 1]]
    assert np.array_equal(id_to_rgb(rgb_to_id(rgb)), rgb)


def test_reading_the_sample_gives_the_json_areas_and_categories(sample):
    annotations, categories = sample
    assert [a.image_id for a in annotations] == [142238, 439180]
    assert len(categories) == 133 and categories[1]["name"] == "person"
    for annotation in annotations:
        for segment in annotation.segments_info:
            assert int((annotation.ids == segment["id"]).sum()) == segment["area"]


def test_write_then_read_reproduces_pngs_and_the_json_area_and_bbox(sample, coco_sample_root, tmp_path):
    annotations, categories = sample
    write_panoptic(annotations, categories, tmp_path / "out.json")
    again, _ = read_panoptic(tmp_path / "out.json")
    original = json.loads((coco_sample_root / "panoptic_examples.json").read_text())["annotations"]
    for before, after, entry in zip(annotations, again, original, strict=True):
        assert np.array_equal(before.ids, after.ids)
        assert after.image_id == entry["image_id"]
        by_id = {s["id"]: s for s in after.segments_info}
        for segment in entry["segments_info"]:  # area and bbox measured by us, equal to COCO's own
            assert {k: by_id[segment["id"]][k] for k in segment} == segment
        assert np.array_equal(np.array(Image.open(tmp_path / "out" / entry["file_name"])),
                              np.array(Image.open(coco_sample_root / "panoptic_examples" / entry["file_name"])))


def test_two_channel_sample_is_the_same_segmentation_as_the_rgb_png(sample, coco_sample_root):
    annotations, categories = sample
    for annotation in annotations:
        two = read_two_channel(coco_sample_root / "panoptic_examples_2ch_format" / Path(annotation.file_name).name,
                               categories)
        _same_segmentation(annotation, two)
        assert sum(s["iscrowd"] for s in two.segments_info) == sum(s["iscrowd"] for s in annotation.segments_info) > 0


def test_writing_two_channels_matches_the_sample_up_to_instance_numbering(sample, coco_sample_root, tmp_path):
    annotations, categories = sample
    for annotation in annotations:
        name = Path(annotation.file_name).name
        reference = np.array(Image.open(coco_sample_root / "panoptic_examples_2ch_format" / name))
        ours = to_two_channel(annotation, categories)
        assert np.array_equal(ours[..., 0], reference[..., 0])  # categories
        assert np.array_equal(ours[..., 1] == 255, reference[..., 1] == 255)  # crowd regions
        assert not ours[..., 2].any()
        pairs = np.unique(np.stack([ours[..., :2].reshape(-1, 2), reference[..., :2].reshape(-1, 2)], 1), axis=0)
        assert len(pairs) == len(np.unique(reference[..., :2].reshape(-1, 2), axis=0))  # a renumbering
        write_two_channel(annotation, categories, tmp_path / name)
        _same_segmentation(annotation, read_two_channel(tmp_path / name, categories))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_semantic_and_instances_agree_with_the_sample_detection_json(sample, coco_sample_root):
    annotations, categories = sample
    detection = json.loads((coco_sample_root / "panoptic_coco_detection_format.json").read_text())["annotations"]
    for annotation in annotations:
        parts = to_semantic_instances(annotation, categories)
        theirs = [d for d in detection if d["image_id"] == annotation.image_id]
        decoded = {(d["category_id"], mask_utils.decode(d["segmentation"]).astype(bool).tobytes(), d["iscrowd"])
                   for d in theirs if categories[d["category_id"]]["isthing"]}
        ours = {(int(c), m.tobytes(), int(k)) for m, c, k in zip(parts.masks, parts.category_ids, parts.iscrowd,
                                                                  strict=True)}
        assert ours == decoded and len(ours) == len(parts.masks)
        semantic = np.zeros_like(parts.semantic)
        for d in theirs:
            semantic[mask_utils.decode(d["segmentation"]).astype(bool)] = d["category_id"]
        assert np.array_equal(parts.semantic, semantic)


def test_semantic_and_instances_round_trip(sample):
    annotations, categories = sample
    for annotation in annotations:
        back = from_semantic_instances(to_semantic_instances(annotation, categories), categories,
                                       annotation.file_name, annotation.image_id)
        _same_segmentation(annotation, back)


def test_thing_pixels_of_the_semantic_map_without_an_instance_become_void():
    categories = {1: {"isthing": 1}, 5: {"isthing": 0}}
    parts = SemanticInstances(np.array([[1, 1, 5]]), np.array([[[True, False, False]]]), np.array([1]),
                              np.array([False]))
    annotation = from_semantic_instances(parts, categories)
    assert annotation.ids.tolist() == [[2, 0, 1]]
    assert annotation.segments_info == [{"id": 1, "category_id": 5, "iscrowd": 0},
                                        {"id": 2, "category_id": 1, "iscrowd": 0}]
    # instance pixels take the instance's category, even where the semantic map says stuff
    covered = SemanticInstances(np.array([[5, 5]]), np.array([[[True, True]]]), np.array([1]), np.array([True]))
    annotation = from_semantic_instances(covered, categories)
    assert annotation.ids.tolist() == [[1, 1]]
    assert annotation.segments_info == [{"id": 1, "category_id": 1, "iscrowd": 1}]


def test_an_empty_image_reads_and_writes(tmp_path):
    categories = [{"id": 1, "name": "person", "isthing": 1}]
    empty = PanopticAnnotation(np.zeros((4, 5), dtype=np.int64), [], "empty.png", 7)
    write_panoptic([empty], categories, tmp_path / "p.json")
    (back,), _ = read_panoptic(tmp_path / "p.json")
    assert back.segments_info == [] and not back.ids.any() and back.ids.shape == (4, 5)
    parts = to_semantic_instances(back, {1: categories[0]})
    assert parts.masks.shape == (0, 4, 5) and not parts.semantic.any()


# bad input: one line, naming the file and the segment


def _write_sample_copy(coco_sample_root: Path, tmp_path: Path, edit) -> Path:
    shutil.copytree(coco_sample_root / "panoptic_examples", tmp_path / "panoptic_examples")
    data = json.loads((coco_sample_root / "panoptic_examples.json").read_text())
    edit(data)
    (tmp_path / "panoptic_examples.json").write_text(json.dumps(data))
    return tmp_path / "panoptic_examples.json"


def _one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_an_id_of_the_png_missing_from_the_json_is_an_error(coco_sample_root, tmp_path):
    path = _write_sample_copy(coco_sample_root, tmp_path,
                              lambda d: d["annotations"][0]["segments_info"].pop(0))
    with pytest.raises(PixelsegError) as error:
        read_panoptic(path)
    _one_line(error, "000000142238.png", "segment 3937500", "in the PNG but not in segments_info")


def test_an_id_of_the_json_missing_from_the_png_is_an_error(coco_sample_root, tmp_path):
    def add(data):
        data["annotations"][1]["segments_info"].append({"id": 77, "category_id": 1, "iscrowd": 0})
    with pytest.raises(PixelsegError) as error:
        read_panoptic(_write_sample_copy(coco_sample_root, tmp_path, add))
    _one_line(error, "000000439180.png", "segment 77", "in segments_info but not in the PNG")


def test_an_unknown_category_id_is_an_error(coco_sample_root, tmp_path):
    def relabel(data):
        data["annotations"][0]["segments_info"][2]["category_id"] = 4242
    with pytest.raises(PixelsegError) as error:
        read_panoptic(_write_sample_copy(coco_sample_root, tmp_path, relabel))
    _one_line(error, "000000142238.png", "segment 2035955", "unknown category_id 4242")

    Image.fromarray(np.array([[[1, 0, 0], [250, 0, 0]]], dtype=np.uint8)).save(tmp_path / "two.png")
    with pytest.raises(PixelsegError) as error:
        read_two_channel(tmp_path / "two.png", {1: {"isthing": 1}})
    _one_line(error, "two.png", "category 250", "unknown category_id")


def test_a_segment_listed_twice_is_an_error(coco_sample_root, tmp_path):
    def duplicate(data):
        data["annotations"][0]["segments_info"].append(dict(data["annotations"][0]["segments_info"][3]))
    with pytest.raises(PixelsegError) as error:
        read_panoptic(_write_sample_copy(coco_sample_root, tmp_path, duplicate))
    _one_line(error, "000000142238.png", "segment 4325578", "listed twice")


def test_overlapping_instance_masks_are_an_error():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2], masks[1, 3], masks[2, 1:3, 1] = True, True, True
    parts = SemanticInstances(np.ones((4, 4), dtype=np.int64), masks, np.array([1, 1, 1]), np.zeros(3, bool))
    with pytest.raises(PixelsegError) as error:
        from_semantic_instances(parts, {1: {"isthing": 1}}, "image7.png")
    _one_line(error, "image7.png", "instances 0 and 2 overlap", "x=1, y=1")


def test_crowd_regions_survive_every_conversion_and_crowd_stuff_is_an_error(sample, tmp_path):
    annotations, categories = sample
    crowd = {(a.file_name, s["id"]) for a in annotations for s in a.segments_info if s["iscrowd"]}
    assert len(crowd) == 3
    for annotation in annotations:
        parts = to_semantic_instances(annotation, categories)
        assert int(parts.iscrowd.sum()) == sum(s["iscrowd"] for s in annotation.segments_info)
    stuff = PanopticAnnotation(np.array([[1, 1]]), [{"id": 1, "category_id": 184, "iscrowd": 1}], "s.png")
    with pytest.raises(PixelsegError) as error:
        write_panoptic([stuff], categories, tmp_path / "s.json")
    _one_line(error, "s.png", "segment 1", "crowd region of the stuff category 184")
    assert not (tmp_path / "s.json").exists()


def test_a_missing_png_and_a_grey_png_are_errors(coco_sample_root, tmp_path):
    with pytest.raises(PixelsegError) as error:
        read_panoptic(coco_sample_root / "panoptic_examples.json", tmp_path)
    _one_line(error, "000000142238.png", "no such panoptic PNG")
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(PixelsegError) as error:
        read_panoptic_png(tmp_path / "grey.png", [])
    _one_line(error, "grey.png", "must be RGB")
