"""Test helpers shared by the model tests."""

from __future__ import annotations

import torch
from torch import nn

from pixelseg.models.base import SegmentationOutput, main_logits


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def losses_over_steps(model: nn.Module, *, in_channels: int, num_classes: int, size: tuple[int, int],
                      steps: int = 8, batch: int = 2, lr: float = 1e-3) -> list[float]:
    """Train on one fixed random batch (a learnable target: a half-plane mask) and return the losses."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, in_channels, *size, generator=generator)
    target = torch.zeros(batch, *size, dtype=torch.long)
    target[:, :, size[1] // 2:] = num_classes - 1
    images[:, 0] += target.float()  # the class is visible in the input
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        output = model(images)
        logits = main_logits(output)
        crop_target = target
        if logits.shape[-2:] != target.shape[-2:]:  # valid convolutions: compare with the centre
            top = (size[0] - logits.shape[-2]) // 2
            left = (size[1] - logits.shape[-1]) // 2
            crop_target = target[:, top:top + logits.shape[-2], left:left + logits.shape[-1]]
        loss = nn.functional.cross_entropy(logits, crop_target)
        if isinstance(output, SegmentationOutput):
            for weight, aux in zip(output.aux_weights, output.aux, strict=True):
                loss = loss + weight * nn.functional.cross_entropy(
                    nn.functional.interpolate(aux, size=logits.shape[-2:], mode="bilinear"), crop_target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
