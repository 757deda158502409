"""The ISBI 2012 EM segmentation challenge's errors for a binary cell/membrane map (Arganda-Carreras et al.,
"Crowdsourcing the creation of image segmentation algorithms for connectomics", Front. Neuroanat. 2015,
doi:10.3389/fnana.2015.00142), as the challenge's Fiji scripts compute them per section
(``trainableSegmentation.metrics``): cells (label 255 in the challenge, class 1 here) are the foreground,
membranes the background; the prediction is the probability of *cell*, binarised ``p > threshold``.

- **pixel error**: the fraction of pixels whose binarised label differs from the ground truth, at 0.5 and
  at the best of the thresholds 0.05, 0.10, ..., 0.95 (the minimum over thresholds); and the form of the
  challenge's Fiji script, ``1 −`` the maximal F-score of the cell pixels over the thresholds
  (``pixel_error_fscore``; true/false positives and negatives pooled over the sections). The challenge's page
  names both ("1 − the maximal F-score of pixel similarity, or squared Euclidean distance"); with cells about
  three quarters of the pixels the F-score form is about 0.6 times the fraction.
- **Rand error**: ``1 − V^Rand``, the foreground-restricted Rand F-score of the cell *segments* — the
  4-connected components of cell pixels in the ground truth and in the prediction. Ground-truth membrane
  pixels are left out; predicted membrane pixels inside ground-truth cells count as singletons (each its
  own segment). With ``n_ij`` the pixels of true segment ``i`` and predicted segment ``j``, ``t_i`` and
  ``s_j`` the segment sizes, counting pairs of pixels (SNEMI3D's and ``skimage.metrics.adapted_rand_error``'s
  form): ``V^Rand = 2 Σ(n_ij² − n_ij) / (Σ(s_j² − s_j) + Σ(t_i² − t_i))``; ``pairs=False`` gives the
  paper's ``N²``-normalised form ``2 Σ n_ij² / (Σ s_j² + Σ t_i²)``. At 0.5 (``rand_error``) and, as the
  script's "1 − maximal F-score of the foreground-restricted Rand index", at the best of the thresholds
  (``rand_error_best``: the mean over the sections at one threshold, the lowest such mean).
- **warping error** (Jain et al., "Boundary learning by optimization with topological constraints",
  CVPR 2010): the ground truth is warped towards the prediction by flipping *simple* pixels only — pixels
  whose flip changes no topology (no split, merge, hole or object created or removed), in 2D digital
  topology with 4-connected cells and 8-connected membranes — and the error is the fraction of pixels
  where the warped truth still disagrees: only topological mistakes remain. Greedy as the challenge's
  script: passes over the mismatches, most confident prediction first, each flipped at once if simple
  now, until a pass flips nothing. (Fiji's script tests simplicity on the 3×3 patch embedded in 3D, which
  lets holes appear and vanish; here the strict 2D test is used. Its later "minimum splits and mergers"
  variant, which counts each split or merger once and takes the best threshold, is not implemented.)

Rand and warping errors are averaged over sections, the pixel errors pooled over pixels (the same for
sections of one size). :class:`ISBIChallengeErrors` is the streaming evaluator of the three;
:class:`ISBIScores` adds them to the confusion-matrix scores (mIoU, ...) for the ISBI 2012 data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .base import Scores, all_reduce_sum
from .confusion import ConfusionMatrix

PIXEL_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95

SCORE_NAMES: tuple[str, ...] = ("pixel_error", "pixel_error_best", "pixel_error_best_threshold", "pixel_error_fscore",
                               "pixel_error_fscore_threshold", "rand_error", "rand_error_best",
                               "rand_error_best_threshold", "warping_error")

# The 8 neighbours of a pixel, clockwise from the top; bit k of a neighbourhood code is neighbour k.
NEIGHBOURS: tuple[tuple[int, int], ...] = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


# ---- simple points -------------------------------------------------------------------------------------

def _components(cells: list[tuple[int, int]], connectivity: int) -> list[set[tuple[int, int]]]:
    """Connected components of a few pixels (4- or 8-connectivity)."""
    def adjacent(a: tuple[int, int], b: tuple[int, int]) -> bool:
        dy, dx = abs(a[0] - b[0]), abs(a[1] - b[1])
        return dy + dx == 1 if connectivity == 4 else max(dy, dx) == 1

    left, found = set(cells), []
    while left:
        component, frontier = set(), [left.pop()]
        while frontier:
            pixel = frontier.pop()
            component.add(pixel)
            near = {other for other in left if adjacent(pixel, other)}
            left -= near
            frontier.extend(near)
        found.append(component)
    return found


def is_simple_configuration(code: int) -> bool:
    """Whether the centre of a 3×3 neighbourhood (``code``: bit k set when neighbour k is a cell) is simple
    for 4-connected cells and 8-connected membranes: one cell component 4-adjacent to it and one membrane
    component around it (the topological numbers T4 = T8 = 1 of Bertrand & Malandain, PRL 1994)."""
    cells = [NEIGHBOURS[k] for k in range(8) if code >> k & 1]
    membrane = [NEIGHBOURS[k] for k in range(8) if not code >> k & 1]
    touching = sum(1 for component in _components(cells, 4) if any(abs(y) + abs(x) == 1 for y, x in component))
    return touching == 1 and len(_components(membrane, 8)) == 1


SIMPLE: tuple[bool, ...] = tuple(is_simple_configuration(code) for code in range(256))


def neighbourhood_codes(cells: np.ndarray) -> np.ndarray:
    """The 8-bit neighbourhood code of every pixel of a boolean map; outside the map is membrane."""
    padded = np.pad(cells.astype(np.uint8), 1)
    height, width = cells.shape
    codes = np.zeros(cells.shape, dtype=np.uint8)
    for bit, (dy, dx) in enumerate(NEIGHBOURS):
        codes |= padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] << bit
    return codes


def simple_points(cells: np.ndarray) -> np.ndarray:
    """Which pixels of a boolean cell map can be flipped without changing its topology."""
    return np.asarray(SIMPLE, dtype=bool)[neighbourhood_codes(cells)]


# ---- the three errors of one section -------------------------------------------------------------------

class TruthSegments:
    """The truth side of :func:`adapted_rand_error`, prepared once to score many predictions against it:
    the non-membrane pixels (label != 0), their segment indices ``0..n-1`` and the segments' sizes."""

    def __init__(self, truth_segments: np.ndarray) -> None:
        self.shape = truth_segments.shape
        self.counted = truth_segments.reshape(-1) != 0
        self.index = np.unique(truth_segments.reshape(-1)[self.counted], return_inverse=True)[1]
        self.sizes = np.bincount(self.index).astype(np.float64)

    def rand_error(self, predicted_segments: np.ndarray, *, pairs: bool = True) -> float:
        """:func:`adapted_rand_error` of ``predicted_segments`` against these segments."""
        if predicted_segments.shape != self.shape:
            raise ValueError(f"truth shape {self.shape} != prediction shape {predicted_segments.shape}")
        predicted_raw = predicted_segments.reshape(-1)[self.counted]
        singletons = predicted_raw == 0
        predicted = np.unique(predicted_raw[~singletons], return_inverse=True)[1]
        predicted_sizes = np.bincount(predicted).astype(np.float64)
        joint = np.unique(self.index[~singletons] * (predicted.max(initial=0) + 1) + predicted, return_counts=True)[1]
        joint = joint.astype(np.float64)
        if pairs:  # each segment's pairs of distinct pixels; a singleton has none
            agree = (joint**2).sum() - joint.sum()
            predicted_pairs = (predicted_sizes**2).sum() - predicted_sizes.sum()
            truth_pairs = (self.sizes**2).sum() - self.sizes.sum()
        else:
            extra = float(singletons.sum())
            agree = (joint**2).sum() + extra
            predicted_pairs = (predicted_sizes**2).sum() + extra
            truth_pairs = (self.sizes**2).sum()
        total = predicted_pairs + truth_pairs
        return 0.0 if total == 0 else float(1.0 - 2.0 * agree / total)


def adapted_rand_error(truth_segments: np.ndarray, predicted_segments: np.ndarray, *, pairs: bool = True) -> float:
    """``1 − V^Rand`` of two label maps: truth label 0 (membrane) is left out, predicted label 0 pixels
    are singletons. ``pairs`` counts pairs of distinct pixels (skimage's and SNEMI3D's form), otherwise
    the ``N²``-normalised form of the paper. No pair anywhere (nothing to split or merge) is error 0."""
    return TruthSegments(truth_segments).rand_error(predicted_segments, pairs=pairs)


def rand_error(truth_cells: np.ndarray, predicted_cells: np.ndarray, *, pairs: bool = True) -> float:
    """Foreground-restricted Rand error of two boolean cell maps: their 4-connected cell components as
    segments (:func:`adapted_rand_error`)."""
    truth_segments, _ = ndimage.label(truth_cells)  # scipy's default structure: 4-connectivity
    predicted_segments, _ = ndimage.label(predicted_cells)
    return adapted_rand_error(truth_segments, predicted_segments, pairs=pairs)


def warp_truth(truth_cells: np.ndarray, cell_probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The ground truth warped towards ``cell_probability > threshold`` by flipping simple pixels only.

    Each pass visits the pixels where the two disagree, the most confident prediction (largest
    ``|p − threshold|``) first, ties in column-major order as the challenge's script, and flips each one
    that is simple in the current map; passes repeat until one flips nothing."""
    height, width = truth_cells.shape
    stride = width + 2
    target = np.pad(cell_probability > threshold, 1).reshape(-1)
    state = np.pad(truth_cells.astype(bool), 1).reshape(-1)
    confidence = np.pad(np.abs(cell_probability.astype(np.float64) - threshold), 1).reshape(-1)
    offsets = [dy * stride + dx for dy, dx in NEIGHBOURS]
    n, ne, e, se, s, sw, w, nw = offsets
    simple = SIMPLE
    while True:
        mismatched = np.flatnonzero(state != target)
        if mismatched.size == 0:
            break
        rows, columns = np.divmod(mismatched, stride)
        order = mismatched[np.lexsort((rows, columns, -confidence[mismatched]))]
        cells = bytearray(state.astype(np.uint8).tobytes())  # a flat byte map: fast scalar reads in the loop
        flipped = 0
        for index in order.tolist():
            code = (cells[index + n] | cells[index + ne] << 1 | cells[index + e] << 2 | cells[index + se] << 3
                    | cells[index + s] << 4 | cells[index + sw] << 5 | cells[index + w] << 6 | cells[index + nw] << 7)
            if simple[code]:
                cells[index] ^= 1
                flipped += 1
        state = np.frombuffer(bytes(cells), dtype=np.uint8).astype(bool)
        if flipped == 0:
            break
    return state.reshape(height + 2, stride)[1:-1, 1:-1].copy()


def warping_error(truth_cells: np.ndarray, cell_probability: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels where the warped ground truth (:func:`warp_truth`) and the prediction disagree."""
    warped = warp_truth(truth_cells, cell_probability, threshold)
    return float((warped != (cell_probability > threshold)).mean())


# ---- the streaming evaluators --------------------------------------------------------------------------

def cell_probabilities(prediction: Tensor, target: Tensor, foreground: int) -> Tensor:
    """``(B, H, W)`` probabilities of the foreground class from logits ``(B, C, H, W)`` (softmax; one channel:
    sigmoid), probabilities ``(B, H, W)`` or labels ``(B, H, W)`` (1 where ``== foreground``)."""
    if prediction.dim() == target.dim() + 1:
        if not prediction.is_floating_point():
            raise ValueError("predictions with a class dimension must be logits (floating point)")
        logits = prediction.double()
        return logits[:, 0].sigmoid() if logits.shape[1] == 1 else logits.softmax(1)[:, foreground]
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    if prediction.is_floating_point():
        return prediction.double()
    return (prediction == foreground).double()


class ISBIChallengeErrors:
    """Streaming ISBI 2012 errors (pixel, Rand, warping) of binary cell/membrane maps; an
    :class:`~pixelseg.metrics.base.Evaluator`.

    ``update(prediction, target)``: ``target`` labels ``(B, H, W)`` (``foreground`` = cell, any other class
    membrane, ``ignore_index`` left out), ``prediction`` logits ``(B, C, H, W)``, cell probabilities or
    labels ``(B, H, W)``. Ignored pixels count nowhere: in the Rand error they are ground-truth boundary,
    in the warping error the prediction there is taken as the truth.
    """

    takes_logits: ClassVar[bool] = True  # the semantic task passes logits, not their argmax

    def __init__(self, foreground: int = 1, ignore_index: int | None = 255,
                 thresholds: Sequence[float] = PIXEL_THRESHOLDS) -> None:
        if 0.5 not in thresholds:
            raise ValueError("the thresholds must include 0.5")
        self.foreground, self.ignore_index, self.thresholds = foreground, ignore_index, tuple(thresholds)
        # sections, counted pixels, sum of warping errors, then per threshold: true positives, false positives,
        # false negatives (cell pixels) and the sum of the sections' Rand errors
        self.sums = torch.zeros(3 + 4 * len(self.thresholds), dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        if target.dim() == 2:
            prediction, target = prediction[None], target[None]
        probabilities = cell_probabilities(prediction, target, self.foreground).cpu().numpy()
        for probability, labels in zip(probabilities, target.cpu().numpy(), strict=True):
            self.sums += torch.as_tensor(self.section(probability, labels), dtype=torch.float64)

    def section(self, probability: np.ndarray, labels: np.ndarray) -> list[float]:
        """One section's contribution to ``sums``."""
        counted = labels != self.ignore_index if self.ignore_index is not None else np.ones(labels.shape, bool)
        truth = (labels == self.foreground) & counted
        pixels = float(counted.sum())
        if pixels == 0:
            return [0.0] * len(self.sums)
        truth_segments = TruthSegments(ndimage.label(truth)[0])  # prepared once for the Rand error at every threshold
        true_cells = float(truth.sum())
        true_positives, false_positives, false_negatives, rand = [], [], [], []
        for threshold in self.thresholds:
            cells = probability > threshold
            hits, called = float((cells & truth).sum()), float((cells & counted).sum())
            true_positives.append(hits)
            false_positives.append(called - hits)
            false_negatives.append(true_cells - hits)
            rand.append(truth_segments.rand_error(ndimage.label(cells)[0]))
        predicted = probability > 0.5
        warp_from = np.where(counted, truth, predicted)  # ignored pixels: nothing to warp there
        warped = warp_truth(warp_from, probability, 0.5)
        warping = float(((warped != predicted) & counted).sum()) / pixels
        return [1.0, pixels, warping, *true_positives, *false_positives, *false_negatives, *rand]

    def all_reduce(self, group: object | None = None) -> None:
        """Sum the sections' figures of all processes in place (no-op outside ``torch.distributed``)."""
        all_reduce_sum(self.sums, group)

    def compute(self) -> Scores:
        sections, pixels = float(self.sums[0]), float(self.sums[1])
        if sections == 0:
            return dict.fromkeys(SCORE_NAMES, float("nan"))
        true_positives, false_positives, false_negatives, rand_sums = self.sums[3:].view(4, len(self.thresholds))
        wrong = false_positives + false_negatives
        errors, rands = (wrong / pixels).tolist(), (rand_sums / sections).tolist()
        f_errors = (wrong / (2 * true_positives + wrong).clamp(min=1)).tolist()  # 1 − F1 = (FP + FN) / (2TP + FP + FN)
        at_half = self.thresholds.index(0.5)
        best_pixel, best_f, best_rand = self._best(errors), self._best(f_errors), self._best(rands)
        return {"pixel_error": errors[at_half], "pixel_error_best": errors[best_pixel],
                "pixel_error_best_threshold": self.thresholds[best_pixel],
                "pixel_error_fscore": f_errors[best_f], "pixel_error_fscore_threshold": self.thresholds[best_f],
                "rand_error": rands[at_half], "rand_error_best": rands[best_rand],
                "rand_error_best_threshold": self.thresholds[best_rand],
                "warping_error": float(self.sums[2]) / sections}

    def _best(self, errors: list[float]) -> int:
        """The index of the lowest error; of equal ones, the threshold nearest 0.5."""
        return min(range(len(errors)), key=lambda k: (errors[k], abs(self.thresholds[k] - 0.5)))

    def report(self, class_names: Sequence[str] = ()) -> str:
        scores = self.compute()
        return ("| ISBI 2012 error | value |\n|---|---|\n"
                f"| pixel error (threshold 0.5) | {scores['pixel_error']:.6f} |\n"
                f"| pixel error (best threshold, {scores['pixel_error_best_threshold']}) | "
                f"{scores['pixel_error_best']:.6f} |\n"
                f"| pixel error, 1 − maximal F-score (threshold {scores['pixel_error_fscore_threshold']}) | "
                f"{scores['pixel_error_fscore']:.6f} |\n"
                f"| Rand error (threshold 0.5) | {scores['rand_error']:.6f} |\n"
                f"| Rand error (best threshold, {scores['rand_error_best_threshold']}) | "
                f"{scores['rand_error_best']:.6f} |\n"
                f"| warping error | {scores['warping_error']:.6f} |")


class ISBIScores(ConfusionMatrix):
    """The confusion-matrix scores (IoU, Dice, pixel accuracy, ...) and the ISBI 2012 challenge errors of
    a two-class membrane/cell dataset, from the same logits."""

    takes_logits: ClassVar[bool] = True

    def __init__(self, ignore_index: int | None = 255, foreground: int = 1) -> None:
        super().__init__(2, ignore_index)
        self.challenge = ISBIChallengeErrors(foreground, ignore_index)

    def reset(self) -> None:
        super().reset()
        self.challenge.reset()

    def update(self, prediction: Tensor, target: Tensor) -> None:
        super().update(prediction, target)
        self.challenge.update(prediction, target)

    def all_reduce(self, group: object | None = None) -> None:
        super().all_reduce(group)
        self.challenge.all_reduce(group)

    def compute(self) -> Scores:
        return {**super().compute(), **self.challenge.compute()}

    def report(self, class_names: Sequence[str]) -> str:
        return f"{super().report(class_names)}\n\n{self.challenge.report()}"
