"""Instance data readers: synthetic set, COCO JSON (polygons, RLE), Penn-Fudan folders, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pixelseg.data.instances import (
    CocoInstances,
    InstanceMaskFolder,
    SyntheticInstances,
    polygon_self_intersects,
)
from pixelseg.errors import PixelsegError


def test_synthetic_instances_are_deterministic_per_seed_and_split():
    first, again = SyntheticInstances(4, seed=3)[2], SyntheticInstances(4, seed=3)[2]
    assert np.array_equal(first[0].numpy(), again[0].numpy())
    assert np.array_equal(first[1]["masks"].numpy(), again[1]["masks"].numpy())
    other = SyntheticInstances(4, seed=3, split="val")[2]
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_synthetic_instances_touch_and_are_disjoint_with_tight_boxes():
    dataset = SyntheticInstances(24, size=96)
    touching_pairs = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        masks = target["masks"].numpy().astype(bool)
        assert image.shape == (3, 96, 96) and masks.shape[1:] == (96, 96)
        assert masks.sum(axis=0).max() <= 1  # occlusion: every pixel belongs to at most one instance
        assert set(target["labels"].tolist()) <= {1, 2, 3}
        for mask, box in zip(masks, target["boxes"].tolist(), strict=True):
            rows, cols = np.nonzero(mask)
            assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        for a in range(len(masks)):
            grown = ndimage.binary_dilation(masks[a])
            touching_pairs += sum(bool((grown & masks[b]).any()) for b in range(a + 1, len(masks)))
    assert touching_pairs >= 5


def test_coco_sample_rle_masks_equal_pycocotools(coco_sample_root: Path):
    from pycocotools.coco import COCO

    annotation_file = coco_sample_root / "panoptic_coco_detection_format.json"
    dataset = CocoInstances(annotation_file, coco_sample_root / "input_images")
    reference = COCO(str(annotation_file))
    assert len(dataset) == 2
    assert dataset.class_names[1] == "person" and dataset.category_ids[1] == 1
    for index in range(len(dataset)):
        image, target = dataset[index]
        info = dataset.image_info(index)
        assert image.shape == (3, info["height"], info["width"])
        annotations = [a for a in reference.loadAnns(reference.getAnnIds(imgIds=info["id"])) if not a["iscrowd"]]
        assert len(target["masks"]) == len(annotations) > 0
        for mask, label, record in zip(target["masks"].numpy(), target["labels"].tolist(), annotations, strict=True):
            assert np.array_equal(mask, reference.annToMask(record))
            assert dataset.category_ids[label] == record["category_id"]
            assert mask.sum() == record["area"]


def write_coco(tmp_path: Path, annotations: list[dict], *, images=None, categories=None, size=(40, 30)) -> Path:
    Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "a.png")
    data = {"images": images if images is not None else [{"id": 7, "file_name": "a.png", "width": size[0],
                                                             "height": size[1]}],
            "annotations": annotations,
            "categories": categories if categories is not None else [{"id": 3, "name": "box"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def polygon_annotation(identifier: int = 1, **changes) -> dict:
    record = {"id": identifier, "image_id": 7, "category_id": 3, "iscrowd": 0, "bbox": [5, 4, 10, 8],
              "segmentation": [[5, 4, 15, 4, 15, 12, 5, 12]]}
    record.update(changes)
    return record


def test_coco_polygons_are_rasterised_like_pycocotools(tmp_path: Path):
    from pycocotools import mask as mask_utils

    path = write_coco(tmp_path, [polygon_annotation(1), polygon_annotation(2, segmentation=[[20, 20, 30, 20, 25, 28]],
                                                                         bbox=[20, 20, 10, 8])])
    _, target = CocoInstances(path, tmp_path)[0]
    assert target["labels"].tolist() == [1, 1]
    for mask, polygon in zip(target["masks"].numpy(), ([5, 4, 15, 4, 15, 12, 5, 12], [20, 20, 30, 20, 25, 28]),
                             strict=True):
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], 30, 40)))
        assert np.array_equal(mask, expected)


@pytest.mark.parametrize(("record", "message"), [
    (polygon_annotation(11, image_id=99), "annotation 11: unknown image id 99"),
    (polygon_annotation(12, category_id=5), "annotation 12: unknown category id 5"),
    (polygon_annotation(13, segmentation=[]), "annotation 13: empty polygon list"),
    (polygon_annotation(14, segmentation=[[1, 1, 5, 5]]), "annotation 14: polygon needs at least 3 points"),
    (polygon_annotation(15, segmentation=[[0, 0, 10, 10, 10, 0, 0, 10]]), "annotation 15: polygon intersects itself"),
    (polygon_annotation(16, bbox=[5, 4, 0, 8]), "annotation 16: box [5, 4, 0, 8] has zero area"),
    (polygon_annotation(17, segmentation=[[1, 1, 5, 5, 9, 9]]), "annotation 17: polygon has zero area"),
    ({"id": 18, "image_id": 7, "segmentation": [[5, 4, 15, 4, 15, 12]]}, "annotation 18 is missing key(s) category_id"),
    (polygon_annotation(19, image_id="seven"), "annotation 19: malformed value"),
    (polygon_annotation(20, bbox=[5, 4, 10]), "annotation 20: bbox [5, 4, 10] must be [x, y, width, height]"),
    (polygon_annotation(21, segmentation={"size": [30, 41], "counts": "PPYo0"}),
     "annotation 21: RLE size [30, 41] differs from the image's [30, 40]"),
    (polygon_annotation(22, segmentation={"counts": [0, 5]}), "annotation 22: RLE segmentation needs 'counts' and 'size'"),
])
def test_bad_coco_annotations_are_one_line_errors_naming_file_and_annotation(tmp_path, record, message):
    path = write_coco(tmp_path, [polygon_annotation(1), record])
    with pytest.raises(PixelsegError, match="instances.json") as caught:
        CocoInstances(path, tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_coco_rle_compressed_and_uncompressed_decode_like_pycocotools(tmp_path: Path):
    from pycocotools import mask as mask_utils

    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[3:9, 10:25] = 1
    mask[20:28, 2:6] = 1
    compressed = mask_utils.encode(np.asfortranarray(mask))
    compressed["counts"] = compressed["counts"].decode("ascii")
    runs, value = [0], 0  # uncompressed RLE: run lengths in column-major order, starting with 0s
    for pixel in mask.T.ravel():
        if pixel != value:
            runs.append(0)
            value = pixel
        runs[-1] += 1
    uncompressed = {"size": [30, 40], "counts": runs}
    path = write_coco(tmp_path, [polygon_annotation(1, segmentation=compressed, bbox=[2, 3, 23, 25]),
                                 polygon_annotation(2, segmentation=uncompressed, bbox=[2, 3, 23, 25])])
    _, target = CocoInstances(path, tmp_path)[0]
    assert np.array_equal(target["masks"][0].numpy(), mask)
    assert np.array_equal(target["masks"][1].numpy(), mask)
    assert target["boxes"].tolist() == [[2, 3, 25, 28]] * 2


def test_images_without_instances_give_empty_targets(tmp_path: Path):
    path = write_coco(tmp_path, [])
    image, target = CocoInstances(path, tmp_path)[0]
    assert image.shape == (3, 30, 40) and target["masks"].shape == (0, 30, 40)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == target["area"].shape == (0,)
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "PNGImages" / "empty.png")
    Image.new("L", (8, 6)).save(tmp_path / "PedMasks" / "empty_mask.png")
    assert InstanceMaskFolder(tmp_path)[0][1]["masks"].shape == (0, 6, 8)


def test_coco_image_and_category_records_need_integer_ids(tmp_path: Path):
    path = write_coco(tmp_path, [], images=[{"id": "a", "file_name": "a.png", "width": 40, "height": 30}])
    with pytest.raises(PixelsegError, match="instances.json: image a: 'id' must be an integer"):
        CocoInstances(path, tmp_path)
    path = write_coco(tmp_path, [], categories=[{"id": 1.5, "name": "box"}])
    with pytest.raises(PixelsegError, match="category 1.5: 'id' must be an integer"):
        CocoInstances(path, tmp_path)


def test_bad_coco_annotations_can_be_skipped_with_a_warning(tmp_path: Path):
    path = write_coco(tmp_path, [polygon_annotation(1), polygon_annotation(2, image_id=99)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoInstances(path, tmp_path, on_invalid="skip")
    assert any("skipped annotation 2: unknown image id 99" in str(w.message) for w in caught)
    assert len(dataset[0][1]["labels"]) == 1


def test_coco_file_level_problems(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(PixelsegError, match="broken.json: missing key 'annotations'"):
        CocoInstances(path, tmp_path)
    path.write_text("{not json")
    with pytest.raises(PixelsegError, match="not valid JSON"):
        CocoInstances(path, tmp_path)
    wrong_size = write_coco(tmp_path, [polygon_annotation(1)],
                            images=[{"id": 7, "file_name": "a.png", "width": 50, "height": 30}])
    with pytest.raises(PixelsegError, match="a.png: image is 40x30 but instances.json says 50x30"):
        CocoInstances(wrong_size, tmp_path)[0]


def test_polygon_self_intersection_detection():
    assert polygon_self_intersects([0, 0, 10, 10, 10, 0, 0, 10])  # bow tie
    assert not polygon_self_intersects([0, 0, 10, 0, 10, 10, 0, 10])  # square
    assert not polygon_self_intersects([0, 0, 10, 0, 5, 3, 10, 10, 0, 10])  # concave, simple


def make_penn_fudan(root: Path, mask_size=(32, 24)) -> None:
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    Image.new("RGB", (32, 24), (90, 90, 90)).save(root / "PNGImages" / "FudanPed00001.png")
    ids = np.zeros((mask_size[1], mask_size[0]), dtype=np.uint8)
    ids[2:10, 3:8] = 1
    ids[12:20, 20:30] = 2
    Image.fromarray(ids).save(root / "PedMasks" / "FudanPed00001_mask.png")


def test_penn_fudan_layout_gives_one_mask_per_instance_id(tmp_path: Path):
    make_penn_fudan(tmp_path)
    dataset = InstanceMaskFolder(tmp_path)
    image, target = dataset[0]
    assert image.shape == (3, 24, 32)
    assert target["labels"].tolist() == [1, 1]
    assert target["boxes"].tolist() == [[3, 2, 8, 10], [20, 12, 30, 20]]
    assert target["area"].tolist() == [40, 80]
    assert dataset.class_names == ["background", "pedestrian"]


def test_penn_fudan_mask_of_another_size_is_a_clear_error(tmp_path: Path):
    make_penn_fudan(tmp_path, mask_size=(30, 24))
    with pytest.raises(PixelsegError, match="FudanPed00001_mask.png: mask size 30x24 differs from image size 32x24"):
        InstanceMaskFolder(tmp_path)[0]
    with pytest.raises(PixelsegError, match="folder not found"):
        InstanceMaskFolder(tmp_path / "missing")


@pytest.mark.parametrize("file_name", ["../../x.png", "/etc/x.png", "sub/../../x.png", "..\\x.png", "C:\\x.png",
                                       "", 5])
def test_coco_file_names_outside_the_image_folder_are_refused_naming_file_and_image(tmp_path: Path, file_name):
    root = tmp_path / "dataset"
    root.mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")  # a real file outside the root, never read
    path = write_coco(root, [polygon_annotation(1)],
                      images=[{"id": 7, "file_name": file_name, "width": 40, "height": 30}])
    with pytest.raises(PixelsegError) as caught:
        CocoInstances(path, root)
    message = str(caught.value)
    assert "\n" not in message and "instances.json" in message and "image 7" in message


def test_coco_file_names_in_subfolders_of_the_root_still_read(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "sub" / "b.png")
    path = write_coco(tmp_path, [polygon_annotation(1)],
                      images=[{"id": 7, "file_name": "sub/b.png", "width": 40, "height": 30}])
    image, target = CocoInstances(path, tmp_path)[0]
    assert image.shape == (3, 30, 40) and len(target["labels"]) == 1


def test_a_sixteen_bit_instance_mask_keeps_ids_above_255(tmp_path: Path):
    make_penn_fudan(tmp_path)
    ids = np.zeros((24, 32), dtype=np.uint16)
    ids[2:10, 3:8], ids[12:20, 20:30] = 300, 301
    Image.fromarray(ids).save(tmp_path / "PedMasks" / "FudanPed00001_mask.png")
    _, target = InstanceMaskFolder(tmp_path)[0]
    assert target["boxes"].tolist() == [[3, 2, 8, 10], [20, 12, 30, 20]]
