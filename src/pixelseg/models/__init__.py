"""pixelseg models: one file per paper model, one registry."""

from .base import SegmentationModel, SegmentationOutput, main_logits
from .pretrained import from_pretrained, save_pretrained
from .registry import create_model, list_models, register

__all__ = ["SegmentationModel", "SegmentationOutput", "main_logits", "create_model", "from_pretrained",
           "list_models", "register", "save_pretrained"]
