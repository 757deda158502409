"""The ``model:`` section of an experiment config: which registered model, and its arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PixelsegError


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

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise PixelsegError("model.name must name a registered model (see 'pixelseg models'), got ''")
        if self.in_channels is not None and self.in_channels < 1:
            raise PixelsegError(f"model.in_channels must be an integer >= 1 (or null: from the data), "
                                f"got {self.in_channels}")
        if "num_classes" in self.kwargs or "in_channels" in self.kwargs:
            given = "num_classes" if "num_classes" in self.kwargs else "in_channels"
            where = "the dataset's classes" if given == "num_classes" else "model.in_channels or the data"
            raise PixelsegError(f"model.kwargs.{given} is set from {where}; remove it from model.kwargs")
        if self.refine is not None and not isinstance(self.refine.get("name"), str):
            raise PixelsegError("model.refine needs a name, e.g. {name: crf}")
