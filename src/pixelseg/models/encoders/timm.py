"""Encoders from timm (``features_only=True``) with optional pretrained weights.

``encoder_weights`` is either a local file (safetensors, a timm state dict of the same architecture)
or a pretrained tag understood by timm (``"imagenet"`` or any tag like ``"a1_in1k"``), which timm
downloads for users who are online. Nothing is fetched unless a tag is asked for.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import Tensor, nn

from ...errors import PixelsegError, closest


def is_local_weights(weights: str | None) -> bool:
    return weights is not None and (Path(weights).suffix == ".safetensors" or Path(weights).exists())


def create_timm(name: str, *, in_channels: int = 3, weights: str | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` with pixelseg's weights convention and one-line errors.

    A local file is loaded by timm itself (``pretrained_cfg_overlay={"file": ...}``), before any
    ``features_only`` wrapping, so its keys are the plain timm model's keys.
    """
    if not timm.is_model(name):
        raise PixelsegError(f"unknown timm encoder '{name}'{closest(name, timm.list_models())}")
    if weights is None:
        return timm.create_model(name, pretrained=False, in_chans=in_channels, **kwargs)
    if is_local_weights(weights):
        if not Path(weights).is_file():
            raise PixelsegError("encoder weights file not found", weights)
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    elif weights != "imagenet":
        name = f"{name}.{weights}"  # a timm pretrained tag, e.g. "a1_in1k"
    try:
        return timm.create_model(name, pretrained=True, in_chans=in_channels, **kwargs)
    except (RuntimeError, KeyError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PixelsegError(f"cannot load encoder weights for '{name}': {first_line}", weights) from None


class TimmEncoder(nn.Module):
    """A timm backbone returning its feature maps from high to low resolution.

    ``channels[i]`` and ``reductions[i]`` give the width and stride of ``features[i]``.
    ``output_stride`` (8 or 16) switches the last stages to dilated convolutions where timm supports it.
    """

    def __init__(self, name: str, *, in_channels: int = 3, weights: str | None = None,
                 out_indices: tuple[int, ...] | None = None, output_stride: int | None = None) -> None:
        super().__init__()
        kwargs: dict = {"features_only": True}
        if out_indices is not None:
            kwargs["out_indices"] = out_indices
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        self.body = create_timm(name, in_channels=in_channels, weights=weights, **kwargs)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        self.name = name

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


