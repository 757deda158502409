"""Panoptic quality: against torchmetrics' PanopticQuality and a worked example on the COCO panoptic sample,
the paper's void and crowd rules, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

from pixelseg.data.coco_panoptic import PanopticAnnotation, read_panoptic
from pixelseg.errors import PixelsegError
from pixelseg.metrics import Evaluator, PanopticQuality


@pytest.fixture
def sample(coco_sample_root: Path):
    return read_panoptic(coco_sample_root / "panoptic_examples.json", coco_sample_root / "panoptic_examples")


def _segments(ids: np.ndarray, categories: dict[int, int], crowd: set[int] = frozenset()) -> list[dict]:
    return [{"id": s, "category_id": categories[s], "iscrowd": int(s in crowd)}
            for s in np.unique(ids).tolist() if s != 0]


def _prediction(truth: PanopticAnnotation, ids: np.ndarray, extra: dict[int, int] | None = None
                ) -> PanopticAnnotation:
    """A prediction with the segment ids ``ids``: the ground truth's categories, plus ``extra`` new ones."""
    categories = {int(s["id"]): int(s["category_id"]) for s in truth.segments_info} | (extra or {})
    return PanopticAnnotation(ids, _segments(ids, categories), "prediction.png")


def _halved_without_crowd(truth: PanopticAnnotation) -> PanopticAnnotation:
    """Every other row and column (torchmetrics is slow), crowd regions made ordinary segments (torchmetrics
    has no crowd)."""
    ids = truth.ids[::2, ::2]
    categories = {int(s["id"]): int(s["category_id"]) for s in truth.segments_info}
    segments = _segments(ids, categories)
    areas = dict(zip(*np.unique(ids, return_counts=True), strict=True))
    return PanopticAnnotation(ids, [{**s, "area": int(areas[s["id"]])} for s in segments], truth.file_name)


def _largest_stuff(truth: PanopticAnnotation, categories: dict) -> int:
    stuff = [s for s in truth.segments_info if not categories[s["category_id"]]["isthing"]]
    return max(stuff, key=lambda s: s["area"])["id"]


def _perturbations(truth: PanopticAnnotation, categories: dict) -> dict[str, PanopticAnnotation]:
    """Shifted, merged, split and dropped segments, all without void (torchmetrics treats predicted void
    differently from the paper, see pixelseg.metrics.panoptic)."""
    ids = truth.ids
    background = _largest_stuff(truth, categories)
    things = [s for s in truth.segments_info if categories[s["category_id"]]["isthing"] and not s["iscrowd"]]
    by_category: dict[int, list[int]] = {}
    for s in things:
        by_category.setdefault(s["category_id"], []).append(s["id"])
    out = {}

    shifted = np.roll(ids, (7, -5), axis=(0, 1))
    out["shifted"] = _prediction(truth, np.where(shifted == 0, background, shifted))

    merged = np.where(ids == 0, background, ids)
    for members in by_category.values():
        for first, second in zip(members[0::2], members[1::2], strict=False):
            merged = np.where(merged == second, first, merged)
    out["merged"] = _prediction(truth, merged)

    split, extra = np.where(ids == 0, background, ids).copy(), {}
    for number, s in enumerate(things):
        rows = np.argwhere(ids == s["id"])
        half = rows[: len(rows) * (1 + number % 3) // 4]  # a quarter, a half, three quarters, in raster order
        split[half[:, 0], half[:, 1]] = 9_000_000 + number
        extra[9_000_000 + number] = s["category_id"]
    out["split"] = _prediction(truth, split, extra)

    dropped = np.where(ids == 0, background, ids)
    for s in things[::3]:
        dropped = np.where(dropped == s["id"], background, dropped)
    out["dropped"] = _prediction(truth, dropped)

    mixed = np.roll(merged, (-3, 4), axis=(0, 1))
    mixed[:40] = background
    out["merged, shifted and dropped"] = _prediction(truth, mixed)
    return out


def _torchmetrics_input(annotation: PanopticAnnotation) -> torch.Tensor:
    """(H, W, 2) category and instance per pixel (void: category 0, unknown to torchmetrics)."""
    lookup = {0: 0} | {int(s["id"]): int(s["category_id"]) for s in annotation.segments_info}
    category = np.vectorize(lookup.__getitem__)(annotation.ids)
    return torch.from_numpy(np.stack([category, annotation.ids], axis=-1)).long()


def test_panoptic_quality_is_an_evaluator():
    assert isinstance(PanopticQuality([1], [2]), Evaluator)


def test_panoptic_quality_matches_torchmetrics_on_perturbed_coco_sample(sample):
    annotations, categories = sample
    things = [c for c, info in categories.items() if info["isthing"]]
    stuff = [c for c, info in categories.items() if not info["isthing"]]
    truths = [_halved_without_crowd(truth) for truth in annotations]
    perturbed = [_perturbations(truth, categories) for truth in truths]
    for kind in perturbed[0]:
        ours = PanopticQuality(things, stuff)
        theirs = TorchmetricsPQ(things=set(things), stuffs=set(stuff), return_sq_and_rq=True, return_per_class=True)
        for truth, predictions in zip(truths, perturbed, strict=True):
            prediction = predictions[kind]
            ours.update(prediction, truth)
            theirs.update(_torchmetrics_input(prediction)[None], _torchmetrics_input(truth)[None])
        scores = ours.compute()
        per_class = theirs.compute().double()  # (classes, 3): things sorted, then stuff sorted
        order = {c: row for row, c in enumerate(sorted(things) + sorted(stuff))}
        rows = [order[c] for c in ours.category_ids]
        present = ~torch.tensor(scores["PQ_per_class"]).isnan()
        occurring = (theirs.true_positives + theirs.false_positives + theirs.false_negatives)[rows] > 0
        assert torch.equal(present, occurring), kind
        assert 5 <= int(present.sum()) < len(rows), kind
        for column, name in enumerate(("PQ", "SQ", "RQ")):
            expected = per_class[rows, column]
            assert torch.allclose(torch.tensor(scores[f"{name}_per_class"], dtype=torch.float64)[present], expected[present],
                                  rtol=0, atol=1e-6), (kind, name)
            assert abs(scores[name] - float(expected[present].mean())) < 1e-6, (kind, name)
        assert scores["PQ"] < 1.0, kind


def test_panoptic_quality_of_a_hand_worked_example_on_coco_sample(sample):
    """Image 142238 of the sample (areas from its JSON): 13 persons + 1 person crowd, one category-37
    thing, stuff 184, 187, 193 and 2712 void pixels. The prediction: persons 2035955 (2301 px) and
    2098642 (3330 px) merged into one; person 3997935 dropped (void); the first 1000 pixels (raster
    order) of person 2628072 (2931 px) split off as a new person; stuff 187 (8204 px) labelled 193 as a
    new segment; the crowd region predicted as an ordinary person; the void pixels added to stuff 184."""
    annotations, categories = sample
    truth = next(a for a in annotations if a.image_id == 142238)
    ids = truth.ids.copy()
    ids[truth.ids == 2035955] = 2098642
    ids[truth.ids == 3997935] = 0
    rows = np.argwhere(truth.ids == 2628072)[:1000]
    ids[rows[:, 0], rows[:, 1]] = 9_000_001
    ids[truth.ids == 11829830] = 9_000_002
    ids[truth.ids == 0] = 2330219
    prediction = _prediction(truth, ids, {9_000_001: 1, 9_000_002: 193})
    assert {s["id"]: s["area"] for s in truth.segments_info}[2628072] == 2931
    assert int((truth.ids == 0).sum()) == 2712

    evaluator = PanopticQuality.from_coco(list(categories.values()))
    evaluator.update(prediction, truth)
    scores = evaluator.compute()

    # person: 9 untouched matches (IoU 1); 2098642 matched by the merged segment, IoU 3330/5631;
    # 2628072 matched by its remaining 1931 px, IoU 1931/2931; FN: 2035955 (IoU 2301/5631 < 0.5) and
    # 3997935; FP: the 1000-px piece; the crowd-region segment lies wholly on the crowd: no FP.
    person_iou = 9 + 3330 / 5631 + 1931 / 2931
    person = {"PQ": person_iou / 12.5, "SQ": person_iou / 11, "RQ": 11 / 12.5}
    # 37: TP IoU 1. 184: IoU (130762) / (133474 + 130762 - 130762 - 2712 void) = 1.
    # 187: one FN, PQ = SQ = RQ = 0. 193: TP IoU 1 and one FP, RQ = 1 / 1.5.
    others = {37: (1, 1, 1), 184: (1, 1, 1), 187: (0, 0, 0), 193: (2 / 3, 1, 2 / 3)}
    index = {c: k for k, c in enumerate(evaluator.category_ids)}
    for column, name in enumerate(("PQ", "SQ", "RQ")):
        values = scores[f"{name}_per_class"]
        assert values[index[1]] == pytest.approx(person[name], abs=1e-6)
        for category, expected in others.items():
            assert values[index[category]] == pytest.approx(expected[column], abs=1e-6), (name, category)
        assert sum(not math.isnan(v) for v in values) == 5
        stuff = [others[c][column] for c in (184, 187, 193)]
        assert scores[name] == pytest.approx((person[name] + others[37][column] + sum(stuff)) / 5, abs=1e-6)
        assert scores[f"{name}_things"] == pytest.approx((person[name] + others[37][column]) / 2, abs=1e-6)
        assert scores[f"{name}_stuff"] == pytest.approx(sum(stuff) / 3, abs=1e-6)
    assert scores["TP_per_class"][index[1]] == 11
    assert scores["FP_per_class"][index[1]] == 1
    assert scores["FN_per_class"][index[1]] == 2


def _tiny(ids, categories, crowd=(), name="tiny.png") -> PanopticAnnotation:
    ids = np.asarray(ids, dtype=np.int64)
    return PanopticAnnotation(ids, _segments(ids, categories, set(crowd)), name)


def test_void_pixels_are_removed_from_the_predicted_segment_when_matching():
    # ground truth: thing 1 on 4 px, void on 4 px; the prediction covers all 8 px: IoU 4/4, not 4/8
    truth = _tiny([[1, 1, 0, 0], [1, 1, 0, 0]], {1: 1})
    prediction = _tiny([[5, 5, 5, 5], [5, 5, 5, 5]], {5: 1})
    evaluator = PanopticQuality([1], [])
    evaluator.update(prediction, truth)
    assert evaluator.compute()["PQ"] == pytest.approx(1.0)


def test_a_prediction_more_than_half_on_void_or_crowd_of_its_category_is_no_false_positive():
    truth = _tiny([[0, 0, 0, 0, 2, 2, 2, 2],
                   [3, 3, 3, 3, 3, 3, 3, 3]], {2: 1, 3: 9}, crowd=[2])
    # 7: 3 of 4 px on void -> ignored; 8: all on the category-1 crowd -> ignored;
    # 6 (category 2): on the category-1 crowd -> a false positive of category 2
    prediction = _tiny([[7, 7, 7, 4, 8, 8, 6, 6],
                        [7, 4, 4, 4, 4, 4, 4, 4]], {4: 9, 6: 2, 7: 1, 8: 1})
    evaluator = PanopticQuality([1, 2], [9])
    evaluator.update(prediction, truth)
    scores = evaluator.compute()
    assert scores["FP_per_class"] == [0, 1, 0]
    assert scores["FN_per_class"] == [0, 0, 0]  # the crowd region is no false negative
    assert math.isnan(scores["PQ_per_class"][0])
    # exactly half on void is a false positive (the rule says "more than half")
    half = _tiny([[7, 7, 4, 4], [7, 7, 4, 4]], {4: 9, 7: 1})
    evaluator = PanopticQuality([1], [9])
    evaluator.update(half, _tiny([[0, 0, 3, 3], [3, 3, 3, 3]], {3: 9}))
    assert evaluator.compute()["FP_per_class"] == [1, 0]


def test_an_empty_image_adds_nothing_but_false_positives_outside_void():
    empty = _tiny(np.zeros((3, 3)), {})
    evaluator = PanopticQuality([1], [2])
    evaluator.update(empty, empty)
    evaluator.update(_tiny(np.full((3, 3), 5), {5: 1}), empty)  # wholly on void: ignored
    scores = evaluator.compute()
    assert all(math.isnan(v) for v in scores["PQ_per_class"]) and math.isnan(scores["PQ"])
    evaluator.update(_tiny([[4, 4, 4], [4, 4, 4], [0, 0, 0]], {4: 1}), _tiny([[3, 3, 3]] * 2 + [[0, 0, 0]], {3: 2}))
    scores = evaluator.compute()
    assert scores["FP_per_class"] == [1, 0] and scores["FN_per_class"] == [0, 1] and scores["PQ"] == 0.0


def test_batches_report_and_reset():
    truth = _tiny([[1, 1, 2, 2]], {1: 1, 2: 7})
    evaluator = PanopticQuality([1], [7], ["person", "sky"])
    evaluator.update([truth, truth], [truth, truth])
    assert evaluator.compute()["TP_per_class"] == [2, 2]
    evaluator.all_reduce()  # no process group: a no-op
    report = evaluator.report()
    assert "| person | 1.0000 | 1.0000 | 1.0000 |" in report and "PQ_stuff 1.0000" in report
    evaluator.reset()
    assert math.isnan(evaluator.compute()["PQ"])


def test_torch_id_maps_are_accepted():
    truth = _tiny([[1, 1, 2, 2]], {1: 1, 2: 7})
    prediction = PanopticAnnotation(torch.tensor([[1, 1, 1, 2]]), truth.segments_info, "p.png")
    evaluator = PanopticQuality([1], [7])
    evaluator.update(prediction, truth)
    assert evaluator.compute()["SQ_per_class"] == pytest.approx([2 / 3, 0])  # IoU 1/2 is no match


@pytest.mark.parametrize(("ids", "info", "message"), [
    ([[1, 3]], [{"id": 1, "category_id": 1}], "segment 3 is in the id map but not in segments_info"),
    ([[1, 1]], [{"id": 1, "category_id": 1}, {"id": 4, "category_id": 1}],
     "segment 4 of the prediction is in segments_info but not in the id map"),
    ([[1, 1]], [{"id": 1, "category_id": 55}], "segment 1 has unknown category_id 55"),
    ([[1, 1]], [{"id": 1, "category_id": 1}, {"id": 1, "category_id": 1}], "segment 1 is listed twice"),
])
def test_malformed_predictions_are_one_line_errors_naming_file_and_segment(ids, info, message):
    truth = _tiny([[1, 1]], {1: 1})
    evaluator = PanopticQuality([1], [])
    with pytest.raises(PixelsegError, match=message) as caught:
        evaluator.update(PanopticAnnotation(np.array(ids), info, "pred/0001.png"), truth)
    assert str(caught.value).startswith("pred/0001.png: ") and "\n" not in str(caught.value)


def test_prediction_and_ground_truth_of_different_sizes_are_an_error():
    with pytest.raises(PixelsegError, match="shape"):
        PanopticQuality([1], []).update(_tiny([[1, 1, 1]], {1: 1}), _tiny([[1, 1]], {1: 1}))
