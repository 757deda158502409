"""The base class every pixelseg model derives from.

A model maps an image batch ``(B, in_channels, H, W)`` to logits ``(B, num_classes, H, W)``. In training
mode a model with auxiliary heads (deep supervision, PSPNet's auxiliary loss, ...) may return a
``SegmentationOutput`` instead; ``main_logits`` takes the main output from either form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn


@dataclass
class SegmentationOutput:
    """Main logits plus auxiliary logits, each with the weight of its loss term."""

    out: Tensor
    aux: list[Tensor] = field(default_factory=list)
    aux_weights: list[float] = field(default_factory=list)


def main_logits(output: Tensor | SegmentationOutput) -> Tensor:
    return output.out if isinstance(output, SegmentationOutput) else output


class SavesPretrained:
    """``model.save_pretrained(directory)`` for every registered model, also those built on torchvision's
    detectors (Mask R-CNN), which cannot derive from ``SegmentationModel``."""

    pixelseg_config: dict

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (see ``models.pretrained``)."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory)


class SegmentationModel(SavesPretrained, nn.Module):
    """Base class: ``save_pretrained`` writes ``config.json`` + ``model.safetensors``.

    Subclasses that shrink their output (valid convolutions, like the paper U-Net) override
    ``input_size_for`` so that predictors can mirror-pad the input to cover the whole image.
    """

    def input_size_for(self, output_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The input size whose output covers ``output_size``, and the output offset (top, left).

        Same-padded models produce an output the size of their input: the identity.
        """
        return output_size, (0, 0)


def record_output_stride(model: nn.Module, output_stride: int) -> None:
    """Keep the saved config (``save_pretrained``) in step with a changed output stride."""
    config = getattr(model, "pixelseg_config", None)
    if config is not None:
        config["kwargs"]["output_stride"] = output_stride
