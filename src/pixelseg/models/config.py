"""The ``model:`` section of an experiment config: which registered model, and its arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """``name`` is a registered model (``pixelseg models``); ``kwargs`` go to its builder.

    ``refine`` names a refiner saved with the model and applied after it at evaluation and prediction,
    e.g. ``{name: crf, iterations: 5, bilateral_srgb: 13}`` (the dense CRF of DeepLab, Chen et al. 2015).
    """

    name: str = "unet"
    in_channels: int | None = None  # None: from the dataset
    encoder: str | None = None
    encoder_weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] | None = None
