"""The ISBI 2012 challenge errors (issue 17): pixel error, foreground-restricted Rand error and the warping
error of Jain et al. (CVPR 2010), their evaluator in the semantic task, and the paper-setting U-Net config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pixelseg.data.build import DatasetInfo
from pixelseg.data.isbi import ISBI_CLASSES
from pixelseg.engine.config import load_config
from pixelseg.engine.train import build_model_for, monitor_mode
from pixelseg.metrics.base import Evaluator
from pixelseg.metrics.isbi import (
    SIMPLE,
    ISBIChallengeErrors,
    ISBIScores,
    adapted_rand_error,
    rand_error,
    simple_points,
    warp_truth,
    warping_error,
)
from pixelseg.tasks.base import get_task

torch.set_num_threads(1)
skimage_metrics = pytest.importorskip("skimage.metrics")

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce" / "isbi_unet_paper.yaml"


def cells(text: str) -> np.ndarray:
    """A boolean cell map drawn with '#' (cell) and '.' (membrane), one row per line."""
    return np.array([[c == "#" for c in row] for row in text.split()], dtype=bool)


# ---- simple points ---------------------------------------------------------------------------------------

def counts(image: np.ndarray) -> tuple[int, int]:
    """4-connected cell components and 8-connected membrane components, outside the map being membrane."""
    padded = np.pad(image, 1)
    return ndimage.label(padded)[1], ndimage.label(~padded, structure=np.ones((3, 3)))[1]


def test_simple_points_are_the_flips_that_keep_every_component_and_hole() -> None:
    rng = np.random.default_rng(0)
    checked = {True: 0, False: 0}
    for _ in range(120):
        image = rng.random((6, 6)) < rng.uniform(0.3, 0.8)
        simple = simple_points(image)
        before = counts(image)
        for y in range(6):
            for x in range(6):
                flipped = image.copy()
                flipped[y, x] = ~flipped[y, x]
                assert (counts(flipped) == before) == simple[y, x], (image.astype(int), y, x)
                checked[bool(simple[y, x])] += 1
    assert min(checked.values()) > 500  # both kinds were met many times
    assert len(SIMPLE) == 256


def test_hand_worked_simple_and_non_simple_pixels() -> None:
    image = cells("""
        .......
        .###.#.
        .###.#.
        .#####.
        .......""")
    simple = simple_points(image)
    assert not simple[2, 2]  # inside a cell: turning it to membrane would make a hole
    assert simple[1, 1] and simple[1, 5]  # a corner of the cell, the end of a one-pixel arm
    assert not simple[3, 4]  # the bridge joining the arm: a split
    assert not simple[1, 4]  # the mouth of the notch between arm and body: closing it makes a hole
    assert simple[2, 4]  # the bottom of the notch: the cell fills it from below
    assert simple[0, 2]  # membrane on the straight top edge: the cell grows by a pixel
    lone = cells("""
        ...
        .#.
        ...""")
    assert not simple_points(lone)[1, 1]  # deleting an object
    assert not simple_points(~lone)[1, 1]  # filling a hole


# ---- warping error ---------------------------------------------------------------------------------------

TWO_CELLS = cells("""
    ####.####
    ####.####
    ####.####
    ####.####
    ####.####
    ####.####""")


def test_warping_error_of_identical_maps_is_zero() -> None:
    assert warping_error(TWO_CELLS, TWO_CELLS.astype(float)) == 0.0
    assert np.array_equal(warp_truth(TWO_CELLS, TWO_CELLS.astype(float)), TWO_CELLS)


def test_a_boundary_shifted_by_a_pixel_is_no_warping_error_but_pixel_error() -> None:
    shifted = np.roll(TWO_CELLS, 1, axis=1)  # the membrane one column to the right
    assert (shifted != TWO_CELLS).mean() == pytest.approx(12 / 54)  # two columns of 6 pixels
    assert warping_error(TWO_CELLS, shifted.astype(float)) == 0.0
    assert np.array_equal(warp_truth(TWO_CELLS, shifted.astype(float)), shifted)


def test_a_merge_is_counted_pixel_by_pixel() -> None:
    gap = TWO_CELLS.copy()
    gap[2, 4] = True  # the prediction misses one pixel of the membrane: the two cells merge
    assert warping_error(TWO_CELLS, gap.astype(float)) == pytest.approx(1 / 54)
    merged = np.ones_like(TWO_CELLS)  # no membrane at all: every pixel of it is a merge
    assert warping_error(TWO_CELLS, merged.astype(float)) == pytest.approx(6 / 54)


def test_a_split_costs_the_pixel_that_would_cut_the_cell() -> None:
    one_cell = np.ones((6, 9), dtype=bool)
    # The prediction cuts the cell with a membrane line: the truth can follow it but for its last pixel.
    assert warping_error(one_cell, TWO_CELLS.astype(float)) == pytest.approx(1 / 54)
    # A false membrane 3 pixels wide: the cell keeps a 3-pixel bridge across it, the least that joins it.
    wide = TWO_CELLS.copy()
    wide[:, 3:6] = False
    assert warping_error(one_cell, wide.astype(float)) == pytest.approx(3 / 54)


def test_a_hole_or_a_lost_object_is_a_topological_error() -> None:
    truth = np.zeros((7, 7), dtype=bool)
    truth[2:5, 2:5] = True
    assert warping_error(truth, np.zeros((7, 7))) == pytest.approx(1 / 49)  # the cell shrinks to one pixel
    holed = truth.copy()
    holed[3, 3] = False
    assert warping_error(truth, holed.astype(float)) == pytest.approx(1 / 49)  # a hole cannot be made


def test_confident_mismatches_are_warped_first() -> None:
    # A two-pixel membrane cuts a cell in the prediction; the truth may follow either pixel, not both (a
    # split). The one predicted with more confidence (p further from 0.5) is visited first and followed.
    truth = np.ones((2, 5), dtype=bool)
    for top, bottom in ((0.3, 0.05), (0.05, 0.3)):
        probability = np.ones((2, 5))
        probability[0, 2], probability[1, 2] = top, bottom
        warped = warp_truth(truth, probability)
        assert warped[0, 2] == (top > bottom) and warped[1, 2] == (bottom > top)
        assert warping_error(truth, probability) == pytest.approx(1 / 10)


# ---- Rand error ------------------------------------------------------------------------------------------

def singletons(predicted: np.ndarray) -> np.ndarray:
    """Predicted label 0 as one new label per pixel (the challenge's convention), for skimage."""
    relabelled = predicted.astype(np.int64).copy()
    zeros = relabelled == 0
    relabelled[zeros] = relabelled.max() + 1 + np.arange(int(zeros.sum()))
    return relabelled


def test_rand_error_of_a_hand_worked_merge() -> None:
    truth = np.array([[1, 1, 2, 2]])
    merged = np.array([[1, 1, 1, 1]])
    # Pairs: Σ n_ij(n_ij − 1) = 2 + 2 = 4, Σ s(s − 1) = 12, Σ t(t − 1) = 4 → V = 2·4/16 = 0.5.
    assert adapted_rand_error(truth, merged) == pytest.approx(0.5)
    # N²: Σ n_ij² = 8, Σ s² = 16, Σ t² = 8 → V = 16/24.
    assert adapted_rand_error(truth, merged, pairs=False) == pytest.approx(1 / 3)
    # As binary maps: two cells separated by membrane, predicted without it. The truth's membrane pixel is
    # left out (foreground restriction), so this is the merge above.
    binary_truth = np.array([[1, 1, 0, 1, 1]], dtype=bool)
    assert rand_error(binary_truth, np.ones((1, 5), dtype=bool)) == pytest.approx(0.5)
    # Predicted membrane inside a true cell: a singleton, no pair. Σ n(n−1) = 2 + 0 = 2, Σ s(s−1) = 2 + 0,
    # Σ t(t−1) = 6 → V = 4/8.
    assert rand_error(np.ones((1, 3), dtype=bool), np.array([[1, 1, 0]], dtype=bool)) == pytest.approx(0.5)
    assert rand_error(binary_truth, binary_truth) == 0.0


def random_segmentation(rng: np.random.Generator, shape: tuple[int, int], seeds: int, background: float) -> np.ndarray:
    """Voronoi cells of random seeds, some pixels set to label 0."""
    ys, xs = np.indices(shape)
    points = rng.integers(0, shape, size=(seeds, 2))
    distance = (ys[..., None] - points[:, 0]) ** 2 + (xs[..., None] - points[:, 1]) ** 2
    labels = distance.argmin(-1) + 1
    labels[rng.random(shape) < background] = 0
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_rand_error_matches_skimage_adapted_rand_error(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = random_segmentation(rng, (40, 50), int(rng.integers(2, 30)), background=0.2)
    predicted = random_segmentation(rng, (40, 50), int(rng.integers(1, 30)), background=float(rng.uniform(0, 0.3)))
    expected = skimage_metrics.adapted_rand_error(truth, singletons(predicted))[0]
    assert adapted_rand_error(truth, predicted) == pytest.approx(expected, abs=1e-9)
    full = random_segmentation(rng, (40, 50), 12, background=0.0)  # no predicted membrane at all
    assert adapted_rand_error(truth, full) == pytest.approx(skimage_metrics.adapted_rand_error(truth, full)[0],
                                                            abs=1e-9)


def test_rand_error_of_binary_maps_matches_skimage_on_their_components() -> None:
    rng = np.random.default_rng(7)
    truth = ndimage.gaussian_filter(rng.random((64, 64)), 2) > 0.48
    predicted = ndimage.gaussian_filter(rng.random((64, 64)), 2) > 0.5
    expected = skimage_metrics.adapted_rand_error(ndimage.label(truth)[0], singletons(ndimage.label(predicted)[0]))[0]
    assert rand_error(truth, predicted) == pytest.approx(expected, abs=1e-9)


# ---- the evaluators --------------------------------------------------------------------------------------

def test_the_evaluator_averages_sections_and_takes_logits_probabilities_or_labels() -> None:
    rng = np.random.default_rng(3)
    truth = np.stack([TWO_CELLS, np.roll(TWO_CELLS, 2, axis=1)])
    probability = np.clip(truth + rng.normal(0, 0.3, truth.shape), 0.01, 0.99)
    target = torch.from_numpy(truth.astype(np.int64))
    logits = torch.from_numpy(np.stack([np.zeros_like(probability), np.log(probability / (1 - probability))], 1))
    evaluator = ISBIChallengeErrors()
    assert isinstance(evaluator, Evaluator)
    evaluator.update(logits, target)
    scores = evaluator.compute()
    predicted = probability > 0.5
    assert scores["pixel_error"] == pytest.approx((predicted != truth).mean())
    assert scores["rand_error"] == pytest.approx(np.mean([rand_error(t, p) for t, p in zip(truth, predicted, strict=True)]))
    assert scores["warping_error"] == pytest.approx(np.mean([warping_error(t, p) for t, p in zip(truth, probability, strict=True)]))
    best = min(((probability > t) != truth).mean() for t in evaluator.thresholds)
    assert scores["pixel_error_best"] == pytest.approx(best) and best <= scores["pixel_error"]
    as_probabilities = ISBIChallengeErrors()
    as_probabilities.update(torch.from_numpy(probability), target)
    assert as_probabilities.compute() == pytest.approx(scores)
    as_labels = ISBIChallengeErrors()
    as_labels.update(torch.from_numpy(predicted.astype(np.int64)), target)
    assert as_labels.compute()["pixel_error"] == pytest.approx(scores["pixel_error"])
    evaluator.reset()
    assert np.isnan(evaluator.compute()["pixel_error"])


def test_the_scripts_forms_are_one_minus_the_best_f_score_of_cells_and_the_best_threshold_rand_error() -> None:
    """The challenge's Fiji script: pixel error 1 − maximal F-score of the (cell) pixels, its true and false
    positives and negatives pooled over the sections (scikit-learn's f1_score on the stacked maps); Rand error
    at the threshold whose mean over the sections is lowest (scikit-image's adapted Rand error)."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(11)
    truth = np.stack([ndimage.gaussian_filter(rng.random((48, 56)), 2) > 0.47 for _ in range(3)])
    noise = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (48, 56)), 1.5) for _ in range(3)])
    probability = 1 / (1 + np.exp(-(np.where(truth, 1.0, -1.0) + 0.9 + 4 * noise)))  # biased towards cell
    evaluator = ISBIChallengeErrors()
    evaluator.update(torch.from_numpy(probability), torch.from_numpy(truth.astype(np.int64)))
    scores = evaluator.compute()
    f_scores = [f1_score(truth.ravel(), (probability > t).ravel()) for t in evaluator.thresholds]
    best_f = int(np.argmax(f_scores))
    assert scores["pixel_error_fscore"] == pytest.approx(1 - f_scores[best_f], abs=1e-12)
    assert scores["pixel_error_fscore_threshold"] == evaluator.thresholds[best_f] != 0.5
    rands = [np.mean([skimage_metrics.adapted_rand_error(ndimage.label(t)[0], singletons(ndimage.label(p > th)[0]))[0]
                      for t, p in zip(truth, probability, strict=True)]) for th in evaluator.thresholds]
    best_rand = int(np.argmin(rands))
    assert scores["rand_error_best"] == pytest.approx(rands[best_rand], abs=1e-9)
    chosen = evaluator.thresholds.index(scores["rand_error_best_threshold"])  # of equal ones, the nearest 0.5
    assert rands[chosen] == pytest.approx(rands[best_rand], abs=1e-12)
    assert scores["rand_error"] == pytest.approx(rands[evaluator.thresholds.index(0.5)], abs=1e-9)
    assert scores["rand_error_best"] < scores["rand_error"]
    report = evaluator.report()
    assert "1 − maximal F-score" in report and "Rand error (best threshold" in report


def test_ignored_pixels_count_nowhere() -> None:
    target = torch.from_numpy(TWO_CELLS.astype(np.int64))[None]
    prediction = target.clone()
    prediction[0, :, :2] = 1 - prediction[0, :, :2]  # wrong, but ...
    target_ignored = target.clone()
    target_ignored[0, :, :2] = 255  # ... ignored
    evaluator = ISBIChallengeErrors()
    evaluator.update(prediction, target_ignored)
    assert evaluator.compute()["pixel_error"] == 0.0 and evaluator.compute()["warping_error"] == 0.0


def test_isbi_scores_put_the_challenge_errors_beside_miou() -> None:
    target = torch.from_numpy(TWO_CELLS.astype(np.int64))[None]
    gap = TWO_CELLS.copy()
    gap[2, 4] = True
    logits = torch.from_numpy(np.where(gap, 3.0, -3.0))[None, None]
    logits = torch.cat([torch.zeros_like(logits), logits], 1)
    scores = ISBIScores()
    scores.update(logits, target)
    result = scores.compute()
    assert result["mean_iou"] == pytest.approx(np.mean([5 / 6, 48 / 49]))  # membrane 5 of 6, cell 48 of 49
    assert result["pixel_error"] == pytest.approx(1 / 54) and result["warping_error"] == pytest.approx(1 / 54)
    assert "warping error" in scores.report(ISBI_CLASSES) and "IoU" in scores.report(ISBI_CLASSES)


def test_the_semantic_task_scores_isbi_data_with_the_challenge_errors_from_probabilities() -> None:
    task = get_task("semantic")
    info = DatasetInfo(classes=list(ISBI_CLASSES), palette=[[0, 0, 0], [255, 255, 255]], in_channels=1,
                       image_mode="L", ignore_index=255, mean=[0.5], std=[0.25])
    evaluator = task.evaluator(info)
    assert isinstance(evaluator, ISBIScores)
    other = DatasetInfo(**{**info.__dict__, "classes": ["background", "cell"]})
    assert type(task.evaluator(other)).__name__ == "ConfusionMatrix"
    truth = torch.from_numpy(TWO_CELLS.astype(np.int64))[None]
    cell_logit = torch.where(truth == 1, 3.0, -3.0).float()
    cell_logit[0, 0, 0] = -0.2  # a cell pixel at p = 0.45: wrong at 0.5, right at 0.4
    model = lambda images: torch.stack([torch.zeros_like(cell_logit), cell_logit], 1)  # noqa: E731
    task.evaluate_batch(model, (torch.zeros(1, 1, 6, 9), truth), evaluator, torch.device("cpu"))
    scores = evaluator.compute()
    assert scores["pixel_error"] == pytest.approx(1 / 54) and scores["pixel_error_best"] == 0.0


# ---- the paper's configuration ---------------------------------------------------------------------------

def conv(inputs: int, outputs: int, kernel: int) -> int:
    return inputs * outputs * kernel * kernel + outputs


def test_the_paper_config_loads_and_builds_the_31_million_parameter_unet() -> None:
    config = load_config(PAPER_CONFIG)
    assert (config.data.name, config.data.crop_size, config.data.batch_size) == ("isbi2012", 572, 1)
    assert config.data.elastic_sigma == 10.0 and config.data.hflip and config.data.vflip and config.data.rotate90
    assert (config.optim.name, config.optim.momentum, config.optim.schedule) == ("sgd", 0.99, "constant")
    assert (config.train.weight_map.w0, config.train.weight_map.sigma) == (10.0, 5.0)
    assert config.train.monitor == "pixel_error_best"
    assert monitor_mode(config.train.monitor, config.train.monitor_mode) == "min"
    assert config.train.early_stop_patience is not None and config.model.init == "he_normal"
    info = DatasetInfo(classes=list(ISBI_CLASSES), palette=[[0, 0, 0], [255, 255, 255]], in_channels=1,
                       image_mode="L", ignore_index=255, mean=[0.5], std=[0.25])
    torch.manual_seed(0)
    model = build_model_for(config, info)
    # Fig. 1 layer by layer: two 3x3 convs per level (1 → 64 → ... → 1024), then per level up a 2x2
    # up-convolution halving the channels and two 3x3 convs on the concatenation, and the 1x1 classifier.
    widths = [64, 128, 256, 512, 1024]
    expected = conv(1, 64, 3) + conv(64, 64, 3) + conv(64, 2, 1)
    for low, high in zip(widths[:-1], widths[1:], strict=True):
        expected += conv(low, high, 3) + conv(high, high, 3) + conv(high, low, 2) + conv(high, low, 3) + conv(low, low, 3)
    # 31,030,658: also the Fig. 1 count of LabRAI/PyHazards (tests/oracle/test_unet_oracle.py), which checks its
    # port against the authors' released Caffe network (phseg_v5, 31,100,354: its last up-conv keeps 128 channels).
    assert expected == 31_030_658
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.output_size(572) == 388  # the paper's tile
    weight = model.downs[3][2].weight  # 3x3 conv 1024 → 1024: He normal, std sqrt(2 / (9·1024))
    assert weight.std().item() == pytest.approx((2 / (9 * 1024)) ** 0.5, rel=0.01)


def test_pixelseg_evaluate_prints_the_challenge_errors_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    from pixelseg.cli.evaluate import print_scores

    scores = {"model": "m", "split": "val", "images": 5, "classes": list(ISBI_CLASSES), "iou_per_class": [0.5, 0.9],
              "dice_per_class": [0.6, 0.95], "accuracy_per_class": [0.7, 0.96], "pixel_accuracy": 0.9,
              "mean_pixel_accuracy": 0.8, "mean_iou": 0.7, "frequency_weighted_iou": 0.8, "mean_dice": 0.77,
              "pixel_error": 0.0611, "pixel_error_best": 0.06, "pixel_error_fscore": 0.0401, "rand_error": 0.0382,
              "rand_error_best": 0.0301, "warping_error": 0.000353}
    print_scores(scores)
    printed = capsys.readouterr().out
    assert "warping_error: 0.000353" in printed and "rand_error: 0.038200" in printed
    assert "pixel_error_fscore: 0.040100" in printed and "rand_error_best: 0.030100" in printed
