"""Joint image + mask transforms on ``torchvision.transforms.v2``.

The image becomes a ``tv_tensors.Image`` and the mask a ``tv_tensors.Mask``, so every geometric transform
moves both together and resamples the mask with nearest neighbour (never interpolating labels).
Padding introduced by crops is ``ignore_index`` in the mask. ``ElasticDeformation`` is the U-Net
paper's: random displacements on a coarse 3x3 grid (std 10 px), interpolated bicubically to a smooth
per-pixel field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from .config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ElasticDeformation(v2.Transform):
    """Smooth random warp (Ronneberger et al., 2015, Sec. 3.1): 3x3 grid of N(0, sigma²) displacements,
    bicubic interpolation; image resampled bilinearly, mask with nearest neighbour."""

    def __init__(self, sigma: float = 10.0, grid: int = 3, p: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.sigma, self.grid, self.p, self.ignore_index = sigma, grid, p, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(x.shape[-2:] for x in flat_inputs if isinstance(x, tv_tensors.Image))
        if torch.rand(()) >= self.p:
            return {"grid": None}
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma
        displacement = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                torch.arange(width, dtype=torch.float32), indexing="ij")
        sample_y = (ys + displacement[0]) / max(height - 1, 1) * 2 - 1
        sample_x = (xs + displacement[1]) / max(width - 1, 1) * 2 - 1
        return {"grid": torch.stack([sample_x, sample_y], dim=-1)[None]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        grid = params["grid"]
        if grid is None or not isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return inpt
        is_mask = isinstance(inpt, tv_tensors.Mask)
        data = inpt.as_subclass(Tensor)
        source = data.reshape(1, -1, *data.shape[-2:]).float()
        if is_mask:
            # Pixels pulled from outside the image become ignore_index.
            source = source + 1
        warped = F.grid_sample(source, grid, mode="nearest" if is_mask else "bilinear",
                               padding_mode="zeros" if is_mask else "reflection", align_corners=True)
        if is_mask:
            warped = torch.where(warped == 0, float(self.ignore_index) + 1, warped) - 1
        return tv_tensors.wrap(warped.reshape(data.shape).to(data.dtype), like=inpt)


class JointTransform:
    """PIL image + int mask → (float image tensor normalised, int64 mask tensor)."""

    def __init__(self, steps: Sequence[v2.Transform], mean: Sequence[float], std: Sequence[float]) -> None:
        self.geometric = v2.Compose(list(steps)) if steps else None
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Image.Image | np.ndarray | Tensor, mask: np.ndarray | Tensor):
        image_t = tv_tensors.Image(to_chw_uint8(image))
        mask_t = tv_tensors.Mask(torch.as_tensor(np.asarray(mask), dtype=torch.int64))
        if self.geometric is not None:
            image_t, mask_t = self.geometric(image_t, mask_t)
        pixels = image_t.as_subclass(Tensor).float() / 255.0
        return normalize(pixels, self.mean, self.std), mask_t.as_subclass(Tensor).long()


def to_chw_uint8(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    if isinstance(image, Tensor):
        return image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), copy=True))


def normalize(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.as_tensor(mean, dtype=pixels.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=pixels.dtype).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


def default_normalization(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet statistics for RGB (what pretrained encoders expect), 0.5/0.25 otherwise."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [0.5] * in_channels, [0.25] * in_channels


def training_transform(config: AugmentConfig, mean: Sequence[float], std: Sequence[float],
                       ignore_index: int = 255) -> JointTransform:
    steps: list[v2.Transform] = []
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
    if config.scale_range is not None:
        low, high = config.scale_range
        steps.append(RandomScale(low, high))
    if config.elastic_sigma > 0:
        steps.append(ElasticDeformation(config.elastic_sigma, ignore_index=ignore_index))
    if config.crop_size is not None:
        steps.append(v2.RandomCrop(config.crop_size, pad_if_needed=True, fill=fill))
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if config.vflip:
        steps.append(v2.RandomVerticalFlip())
    if config.rotate90:
        # On a non-square image a quarter turn leaves corners uncovered: they are padding, ignore_index.
        turns = [v2.RandomRotation((angle, angle), fill=fill) for angle in (0, 90, 180, 270)]
        steps.append(v2.RandomChoice(turns))
    if config.color_jitter > 0:
        jitter = config.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return JointTransform(steps, mean, std)


def evaluation_transform(mean: Sequence[float], std: Sequence[float]) -> JointTransform:
    return JointTransform([], mean, std)


class RandomScale(v2.Transform):
    """Resize both by one random factor in [low, high] (bilinear image, nearest mask)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(x.shape[-2:] for x in flat_inputs if isinstance(x, tv_tensors.Image))
        factor = float(torch.empty(()).uniform_(self.low, self.high))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return v2.functional.resize(inpt, params["size"], antialias=True)
        return inpt
