"""Metrics against torchmetrics and scikit-learn (random and real CamVid masks), a worked example by hand,
the boundary F-score against brute force, and distributed (2-process Gloo) evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage.segmentation import find_boundaries
from sklearn.metrics import confusion_matrix, jaccard_score, precision_score, recall_score
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from pixelseg.metrics import BoundaryFScore, ConfusionMatrix, Evaluator, VolumeScores, boundary_pixels

IGNORE = 255


def assert_same(ours: torch.Tensor | list[float], reference: torch.Tensor | np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64),
                               rtol=1e-6, atol=1e-7, equal_nan=True)


def check_against_references(prediction: torch.Tensor, target: torch.Tensor, n: int) -> None:
    """Every score of ours equals torchmetrics' and scikit-learn's on these labels."""
    nan_rule = ConfusionMatrix(n, ignore_index=IGNORE)
    nan_rule.update(prediction, target)
    zero_rule = ConfusionMatrix(n, ignore_index=IGNORE, absent="zero")
    zero_rule.update(prediction, target)
    valid = target != IGNORE
    y_true, y_pred = target[valid].numpy(), prediction[valid].numpy()
    labels = list(range(n))

    # scikit-learn: the matrix, per-class precision and recall with NaN where undefined (our default
    # rule), IoU with 0 there (its jaccard_score offers no NaN)
    if not len(y_true):
        assert nan_rule.matrix.sum() == 0 and math.isnan(nan_rule.mean_iou())
    else:
        assert np.array_equal(nan_rule.matrix.numpy(), confusion_matrix(y_true, y_pred, labels=labels))
        assert_same(zero_rule.iou_per_class(), jaccard_score(y_true, y_pred, labels=labels, average=None,
                                                             zero_division=0))
        assert_same(nan_rule.precision_per_class(), precision_score(y_true, y_pred, labels=labels, average=None,
                                                                    zero_division=np.nan))
        assert_same(nan_rule.recall_per_class(), recall_score(y_true, y_pred, labels=labels, average=None,
                                                              zero_division=np.nan))

    # torchmetrics: per class it writes 0 where undefined (our "zero" rule)
    def tm(metric_class, average):
        metric = metric_class(num_classes=n, average=average, ignore_index=IGNORE)
        metric.update(prediction, target)
        return metric.compute()

    assert_same(zero_rule.iou_per_class(), tm(MulticlassJaccardIndex, "none"))
    assert_same(zero_rule.precision_per_class(), tm(MulticlassPrecision, "none"))
    assert_same(zero_rule.recall_per_class(), tm(MulticlassRecall, "none"))
    assert_same(zero_rule.accuracy_per_class(), tm(MulticlassAccuracy, "none"))
    assert_same(zero_rule.dice_per_class(), tm(MulticlassF1Score, "none"))
    if not len(y_true):
        return
    # Averages: torchmetrics' macro mIoU leaves out classes absent from both (our NaN-skip); weighted
    # by support is fwIoU; micro accuracy is pixel accuracy.
    assert_same([nan_rule.mean_iou()], [tm(MulticlassJaccardIndex, "macro")])
    assert_same([nan_rule.frequency_weighted_iou()], [tm(MulticlassJaccardIndex, "weighted")])
    assert_same([nan_rule.pixel_accuracy()], [tm(MulticlassAccuracy, "micro")])
    if all((target == c).any() for c in labels):  # then macro accuracy's rules coincide with ours
        assert_same([nan_rule.mean_pixel_accuracy()], [tm(MulticlassAccuracy, "macro")])
        assert_same([zero_rule.mean_pixel_accuracy()], [tm(MulticlassAccuracy, "macro")])


@st.composite
def label_maps(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    n = draw(st.integers(2, 6))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    # Skewed label distributions so that absent classes (the NaN rule) come up often.
    used = draw(st.integers(1, n))
    target = torch.randint(0, used, shape, generator=generator)
    prediction = torch.randint(0, n, shape, generator=generator)
    ignored = torch.rand(shape, generator=generator) < draw(st.sampled_from([0.0, 0.2, 0.9]))
    return prediction, torch.where(ignored, IGNORE, target), n


@settings(max_examples=30, deadline=None, derandomize=True)
@given(label_maps())
def test_scores_equal_torchmetrics_and_sklearn_on_random_labels(case) -> None:
    prediction, target, n = case
    check_against_references(prediction, target, n)


def test_macro_accuracy_equals_torchmetrics_when_every_class_occurs() -> None:
    generator = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (2, 20, 20), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.1] = IGNORE
    prediction = torch.where(torch.rand(target.shape, generator=generator) < 0.5, target.clamp(max=5),
                             torch.randint(0, 6, target.shape, generator=generator))
    assert all((target == c).any() for c in range(6))
    check_against_references(prediction, target, 6)
    matrix = ConfusionMatrix(6)
    matrix.update(prediction, target)
    accuracy = MulticlassAccuracy(num_classes=6, average="macro", ignore_index=IGNORE)
    assert matrix.mean_pixel_accuracy() == pytest.approx(float(accuracy(prediction, target)), abs=1e-7)


def camvid_masks(root: Path, count: int = 3, size: tuple[int, int] = (120, 90)) -> torch.Tensor:
    masks = []
    for name in sorted((root / "valannot").glob("*.png"))[:count]:
        label = np.array(Image.open(name).resize(size, Image.NEAREST), dtype=np.int64)
        masks.append(torch.from_numpy(np.where(label == 11, IGNORE, label)))
    return torch.stack(masks)


def perturbed(target: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A plausible prediction: the mask shifted by 3 pixels, with 5% of labels replaced at random."""
    generator = torch.Generator().manual_seed(seed)
    prediction = torch.roll(target, shifts=(2, 3), dims=(-2, -1)).clone()
    prediction[prediction == IGNORE] = 0
    noise = torch.rand(prediction.shape, generator=generator) < 0.05
    prediction[noise] = torch.randint(0, 11, (int(noise.sum()),), generator=generator)
    return prediction


def test_scores_equal_torchmetrics_and_sklearn_on_camvid_masks(camvid_root: Path) -> None:
    target = camvid_masks(camvid_root)
    assert (target == IGNORE).any()
    check_against_references(perturbed(target), target, 11)


def test_worked_example_by_hand() -> None:
    # truth      prediction      (255 = ignored)
    # 0 0 1 1    0 1 1 1
    # 2 2 1 255  2 0 1 0
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 1, IGNORE]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 1, 0]])
    matrix = ConfusionMatrix(3)
    matrix.update(prediction, target)
    # Counted pixels: 7. Rows truth, columns prediction:
    #   class 0: (0→0) (0→1)         → [1, 1, 0]
    #   class 1: (1→1) ×3            → [0, 3, 0]
    #   class 2: (2→2) (2→0)         → [1, 0, 1]
    assert matrix.matrix.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    scores = matrix.compute()
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    # IoU: 1/(2+2−1) = 1/3, 3/(3+4−3) = 3/4, 1/(2+1−1) = 1/2
    assert scores["iou_per_class"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert scores["mean_iou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert scores["precision_per_class"] == pytest.approx([1 / 2, 3 / 4, 1])
    assert scores["recall_per_class"] == pytest.approx([1 / 2, 1, 1 / 2])
    assert scores["mean_pixel_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert scores["dice_per_class"] == pytest.approx([2 / 4, 6 / 7, 2 / 3])
    assert scores["frequency_weighted_iou"] == pytest.approx((2 / 3 + 3 * 3 / 4 + 2 / 2) / 7)


def test_absent_class_rule_nan_skips_and_zero_counts() -> None:
    target = torch.tensor([0, 0, 1, 1])
    prediction = torch.tensor([0, 1, 1, 1])
    skip, zero = ConfusionMatrix(3), ConfusionMatrix(3, absent="zero")
    skip.update(prediction, target)
    zero.update(prediction, target)
    assert math.isnan(skip.iou_per_class()[2]) and zero.iou_per_class()[2] == 0
    assert skip.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert zero.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="absent"):
        ConfusionMatrix(3, absent="skip")


def test_ignored_pixels_are_excluded_whatever_is_predicted_there() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16), generator=generator)
    target[:, :5] = IGNORE
    first, second = ConfusionMatrix(4), ConfusionMatrix(4)
    prediction = torch.randint(0, 4, target.shape, generator=generator)
    first.update(prediction, target)
    prediction[:, :5] = torch.randint(0, 4, (2, 5, 16), generator=generator)
    second.update(prediction, target)
    assert torch.equal(first.matrix, second.matrix)
    assert int(first.matrix.sum()) == 2 * 11 * 16
    negative = ConfusionMatrix(4, ignore_index=-1)  # a negative ignore index works the same way
    negative.update(prediction, torch.where(target == IGNORE, -1, target))
    assert torch.equal(negative.matrix, first.matrix)


def test_bad_labels_are_refused() -> None:
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target labels"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="target labels"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([0, -3]))
    with pytest.raises(ValueError, match="predicted labels"):
        matrix.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    assert matrix.matrix.sum() == 0


def test_logits_are_argmaxed() -> None:
    logits = torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 5, (2, 4, 4))
    from_logits, from_labels = ConfusionMatrix(5), ConfusionMatrix(5)
    from_logits.update(logits, target)
    from_labels.update(logits.argmax(1), target)
    assert torch.equal(from_logits.matrix, from_labels.matrix)


# ---- boundary F-score --------------------------------------------------------------------------------
def test_boundary_pixels_are_skimage_inner_boundaries() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 3, (9, 12))
        # skimage leaves label 0 ("background") unmarked; shift labels so that every region is marked
        assert np.array_equal(boundary_pixels(labels), find_boundaries(labels + 1, mode="inner"))


def brute_force_boundary_counts(prediction: np.ndarray, truth: np.ndarray, n: int, tolerance: float
                                ) -> np.ndarray:
    counted = truth != IGNORE
    predicted_edges = find_boundaries(prediction + 1, mode="inner") & counted
    true_edges = find_boundaries(np.where(truth == IGNORE, n + 1, truth) + 1, mode="inner") & counted
    counts = np.zeros((4, n), dtype=np.int64)
    for c in range(n):
        p = np.argwhere(predicted_edges & (prediction == c))
        g = np.argwhere(true_edges & (truth == c))
        counts[1, c], counts[3, c] = len(p), len(g)
        if len(p) and len(g):
            distance = np.sqrt(((p[:, None] - g[None]) ** 2).sum(-1))
            counts[0, c] = int((distance.min(1) <= tolerance).sum())
            counts[2, c] = int((distance.min(0) <= tolerance).sum())
    return counts


@pytest.mark.parametrize("tolerance", [0, 1, 2.5])
def test_boundary_f_score_counts_equal_brute_force(tolerance: float) -> None:
    rng = np.random.default_rng(1)
    metric = BoundaryFScore(4, tolerance=tolerance)
    expected = np.zeros((4, 4), dtype=np.int64)
    for _ in range(3):
        truth = np.kron(rng.integers(0, 4, (4, 5)), np.ones((4, 4), dtype=np.int64))  # blocky regions
        truth[rng.random(truth.shape) < 0.05] = IGNORE
        prediction = np.where(rng.random(truth.shape) < 0.1, rng.integers(0, 4, truth.shape),
                              np.roll(np.where(truth == IGNORE, 0, truth), 1, axis=1))
        metric.update(torch.from_numpy(prediction), torch.from_numpy(truth))
        expected += brute_force_boundary_counts(prediction, truth, 4, tolerance)
    assert np.array_equal(metric.counts.numpy(), expected)


def test_boundary_f_score_worked_example() -> None:
    # A 4x4 square of class 1 in an 8x8 image; the prediction is the square moved one pixel right.
    truth = np.zeros((8, 8), dtype=np.int64)
    truth[2:6, 2:6] = 1
    prediction = np.roll(truth, 1, axis=1)
    exact, tolerant = BoundaryFScore(2, tolerance=0), BoundaryFScore(2, tolerance=1)
    for metric in (exact, tolerant):
        metric.update(torch.from_numpy(prediction)[None], torch.from_numpy(truth)[None])
    # Class 1 boundary: the square's 12 border pixels. Shifted by one column, the predicted border
    # overlaps the true one in 6 pixels (the top and bottom rows minus their outer ends: 3 + 3).
    assert exact.counts[:, 1].tolist() == [6, 12, 6, 12]
    assert exact.f_score_per_class()[1] == pytest.approx(0.5)
    # Within one pixel every border pixel finds a partner.
    assert tolerant.f_score_per_class()[1] == pytest.approx(1.0)


def test_boundary_f_score_on_camvid_masks(camvid_root: Path) -> None:
    target = camvid_masks(camvid_root, count=2, size=(60, 45))
    prediction = perturbed(target)
    metric = BoundaryFScore(11, tolerance=2)
    metric.update(prediction, target)
    expected = sum(brute_force_boundary_counts(p.numpy(), t.numpy(), 11, 2) for p, t in zip(prediction, target,
                                                                                            strict=True))
    assert np.array_equal(metric.counts.numpy(), expected)
    assert 0 < metric.mean_f_score() < 1


# ---- distributed -------------------------------------------------------------------------------------
def _distributed_case() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    target = torch.randint(0, 5, (4, 24, 24), generator=generator)
    target[:, :3] = IGNORE
    prediction = torch.where(torch.rand(target.shape, generator=generator) < 0.7, target.clamp(max=4),
                             torch.randint(0, 5, target.shape, generator=generator))
    return prediction, target


def _evaluators() -> dict[str, Evaluator]:
    # every image of the batch is one "volume" to VolumeScores (it works in any number of dimensions)
    return {"matrix": ConfusionMatrix(5), "boundary": BoundaryFScore(5, tolerance=1), "volume": VolumeScores(5)}


def _gloo_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    prediction, target = _distributed_case()
    evaluators = _evaluators()
    shard = slice(rank * 2, rank * 2 + 2)  # each process evaluates half of the images
    for evaluator in evaluators.values():
        evaluator.update(prediction[shard], target[shard])
        evaluator.all_reduce()
    torch.save({name: evaluator.compute() for name, evaluator in evaluators.items()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_distributed_evaluation_equals_single_process(tmp_path: Path) -> None:
    # fork: the workers need not import this module's heavy test dependencies again
    mp.start_processes(_gloo_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    prediction, target = _distributed_case()
    evaluators = _evaluators()
    for evaluator in evaluators.values():
        evaluator.update(prediction, target)
        evaluator.all_reduce()  # outside torch.distributed: unchanged
    expected = {name: evaluator.compute() for name, evaluator in evaluators.items()}
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for name, scores in expected.items():
            for key, value in scores.items():  # the counts are equal; float sums may round differently
                assert result[name][key] == pytest.approx(value, rel=1e-12, nan_ok=True), (name, key)
