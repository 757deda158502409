"""pixelseg models: one file per paper model, one registry."""

from .base import SegmentationModel, SegmentationOutput, main_logits
from .registry import create_model, from_pretrained, list_models, register, save_pretrained

__all__ = ["SegmentationModel", "SegmentationOutput", "main_logits", "create_model", "from_pretrained",
           "list_models", "register", "save_pretrained"]
