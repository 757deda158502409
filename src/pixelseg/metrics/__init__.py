"""Scores: one confusion matrix for pixels, per-volume Dice/IoU, boundary F-score."""

from .confusion import BoundaryFScore, ConfusionMatrix, boundary_pixels

__all__ = ["BoundaryFScore", "ConfusionMatrix", "boundary_pixels"]
