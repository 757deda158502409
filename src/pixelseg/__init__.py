"""pixelseg — image segmentation on PyTorch, every classic method of the field faithful to its paper."""

from .errors import PixelsegError
from .models import (
                     SegmentationModel,
                     SegmentationOutput,
                     create_model,
                     from_pretrained,
                     list_models,
                     register,
)

__version__ = "0.1.0"
__all__ = ["PixelsegError", "SegmentationModel", "SegmentationOutput", "create_model", "from_pretrained",
           "list_models", "register", "__version__"]
