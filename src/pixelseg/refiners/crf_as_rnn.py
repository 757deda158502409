"""CRF-as-RNN: dense-CRF mean-field iterations as a trainable layer after any segmentation network.

Zheng, Jayasumana, Romera-Paredes, Vineet, Su, Du, Huang & Torr, "Conditional Random Fields as
Recurrent Neural Networks", ICCV 2015 (arXiv:1502.03240). The one idea: each step of mean-field
inference in the dense CRF of Krähenbühl & Koltun — message passing by Gaussian filtering, a weighted
sum of the filter outputs, the label compatibility transform, adding the unaries, softmax — is a
differentiable layer, so T steps unrolled form a recurrent network trained end to end with the CNN
that produces the unaries; the kernel weights and the compatibility matrix are learned.

Defaults follow the paper's released model: appearance kernel theta_alpha = 160 px and theta_beta = 3
intensity levels with weight 5, smoothness kernel theta_gamma = 3 px with weight 3, Potts
compatibility at start, 5 iterations in training (10 at test time in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .dense_crf import IMAGENET_MEAN, IMAGENET_STD, GaussianKernel, bilateral_features, spatial_kernel


class CRFasRNN(nn.Module):
    """Mean-field layer: (logits (B, K, H, W), image (B, 3, H, W) in 0..255) -> refined logits."""

    def __init__(self, num_classes: int, iterations: int = 5, theta_alpha: float = 160.0,
                 theta_beta: float = 3.0, theta_gamma: float = 3.0, appearance_weight: float = 5.0,
                 smoothness_weight: float = 3.0) -> None:
        super().__init__()
        self.num_classes, self.iterations = num_classes, iterations
        self.theta_alpha, self.theta_beta, self.theta_gamma = theta_alpha, theta_beta, theta_gamma
        # Per-class kernel weights (diagonal filter-weighting matrices in the paper's code).
        self.appearance_weight = nn.Parameter(torch.full((num_classes,), appearance_weight))
        self.smoothness_weight = nn.Parameter(torch.full((num_classes,), smoothness_weight))
        self.compatibility = nn.Parameter(1.0 - torch.eye(num_classes))   # Potts to start with

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        batch, classes, height, width = logits.shape
        if classes != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {classes}")
        if image.shape[0] != batch or tuple(image.shape[-2:]) != (height, width):
            raise ValueError(f"image {tuple(image.shape)} does not match logits {tuple(logits.shape)}")
        refined = []
        for index in range(batch):
            colours = image[index].detach().permute(1, 2, 0)
            appearance = GaussianKernel(bilateral_features(colours, self.theta_alpha, self.theta_beta))
            smoothness = spatial_kernel(height, width, self.theta_gamma, str(logits.device))
            unary_logits = logits[index].reshape(classes, -1).T.contiguous()   # (N, K)
            current = unary_logits
            for _ in range(self.iterations):
                q = torch.softmax(current, dim=1)
                message = self.appearance_weight * appearance(q) + self.smoothness_weight * smoothness(q)
                current = unary_logits - message @ self.compatibility.T
            refined.append(current.T.reshape(classes, height, width))
        return torch.stack(refined)


class WithCRFasRNN(nn.Module):
    """Any segmentation model followed by a :class:`CRFasRNN` layer, trained end to end.

    The model's input is a normalised image; ``mean`` and ``std`` (those of the data pipeline) recover
    the 0..255 colours the appearance kernel works on.
    """

    def __init__(self, model: nn.Module, num_classes: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, **crf_options: float) -> None:
        super().__init__()
        self.model = model
        self.crf = CRFasRNN(num_classes, **crf_options)  # type: ignore[arg-type]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        logits = self.model(image)
        if not isinstance(logits, Tensor):  # a training-mode output with auxiliary heads
            logits = logits.out
        colours = ((image[:, :3] * self.std + self.mean) * 255.0).clamp(0, 255)
        return self.crf(logits, colours)
