"""Scores behind one :class:`Evaluator` interface: a confusion matrix for pixels (and the boundary F-score),
per-volume Dice/IoU, COCO box and mask AP for instances. Imports nothing of pixelseg but errors and io."""

from .base import Evaluator, markdown_table
from .coco import CocoEvaluator
from .confusion import BoundaryFScore, ConfusionMatrix, boundary_pixels
from .keypoints import KeypointEvaluator
from .panoptic import PanopticQuality
from .volume import VolumeScores

__all__ = ["BoundaryFScore", "CocoEvaluator", "ConfusionMatrix", "Evaluator", "KeypointEvaluator", "PanopticQuality",
           "VolumeScores", "boundary_pixels", "markdown_table"]
