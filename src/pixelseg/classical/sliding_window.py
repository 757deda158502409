"""The sliding-window baseline and the insight behind fully convolutional networks.

Ciresan, Giusti, Gambardella & Schmidhuber, "Deep Neural Networks Segment Neuronal Membranes in
Electron Microscopy Images", NIPS 2012: label every pixel by running a patch classifier on the window
centred on it. Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (arXiv:1411.4038), section 3.1: the fully connected layers of such a classifier are
convolutions whose kernels cover their whole input, so the same weights applied convolutionally to
the whole (padded) image give every pixel's window classification in one pass, sharing the
computation of overlapping windows.

:class:`PatchClassifier` classifies (B, C, window, window) patches; :func:`sliding_window_predict`
labels an image patch by patch; :meth:`PatchClassifier.fully_convolutional` returns the equivalent
:class:`FullyConvolutionalPatchClassifier` whose output equals the sliding window's at every pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchClassifier(nn.Module):
    """Valid 3x3 convolutions + ReLU, then two fully connected layers over the remaining map.

    ``window`` must be odd and at least ``2 * len(conv_channels) + 1``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, window: int = 15,
                 conv_channels: tuple[int, ...] = (32, 64), hidden: int = 128) -> None:
        super().__init__()
        if window % 2 == 0 or window < 2 * len(conv_channels) + 1:
            raise ValueError(f"window must be odd and >= {2 * len(conv_channels) + 1}, got {window}")
        self.window, self.num_classes, self.in_channels = window, num_classes, in_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for width in conv_channels:
            layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.remaining = window - 2 * len(conv_channels)       # side of the map the FC layer sees
        self.fc1 = nn.Linear(channels * self.remaining ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, patches: Tensor) -> Tensor:
        """(B, C, window, window) patches -> (B, num_classes) logits for their centre pixels."""
        return self.fc2(F.relu(self.fc1(self.features(patches).flatten(1))))

    def fully_convolutional(self) -> FullyConvolutionalPatchClassifier:
        """The same weights as convolutions: fc1 becomes a ``remaining x remaining`` conv, fc2 a 1x1."""
        return FullyConvolutionalPatchClassifier(self)


class FullyConvolutionalPatchClassifier(nn.Module):
    """A :class:`PatchClassifier` applied to a whole image at once; (B, C, H, W) -> (B, K, H, W)."""

    def __init__(self, classifier: PatchClassifier) -> None:
        super().__init__()
        self.window = classifier.window
        self.features = classifier.features
        fc1, fc2 = classifier.fc1, classifier.fc2
        feature_channels = fc1.in_features // classifier.remaining ** 2
        self.fc1 = nn.Conv2d(feature_channels, fc1.out_features, classifier.remaining)
        self.fc2 = nn.Conv2d(fc2.in_features, fc2.out_features, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(fc1.weight.reshape(self.fc1.weight.shape))
            self.fc1.bias.copy_(fc1.bias)
            self.fc2.weight.copy_(fc2.weight[:, :, None, None])
            self.fc2.bias.copy_(fc2.bias)

    def forward(self, image: Tensor) -> Tensor:
        padded = pad_for_window(image, self.window)
        return self.fc2(F.relu(self.fc1(self.features(padded))))


def pad_for_window(image: Tensor, window: int) -> Tensor:
    """Reflect-pad by half a window so that every pixel has a full window centred on it."""
    half = window // 2
    mode = "reflect" if min(image.shape[-2:]) > half else "replicate"
    return F.pad(image, (half, half, half, half), mode=mode)


@torch.no_grad()
def sliding_window_predict(classifier: PatchClassifier, image: Tensor, batch_size: int = 4096) -> Tensor:
    """Label every pixel from its own window, one classifier call per pixel (in batches)."""
    batch, _, height, width = image.shape
    logits = []
    for start in range(0, height * width * batch, batch_size):
        end = min(start + batch_size, height * width * batch)
        index = torch.arange(start, end, device=image.device)
        pixel, rest = index // (height * width), index % (height * width)
        logits.append(classifier(windows_at(image, classifier.window, pixel, rest // width, rest % width)))
    flat = torch.cat(logits)                                             # (B*H*W, K)
    return flat.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


def windows_at(image: Tensor, window: int, batch_index: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """(P, C, window, window) windows of ``image`` (B, C, H, W) centred on the P given pixels."""
    padded = pad_for_window(image, window)
    offsets = torch.arange(window, device=image.device)
    row_index = (rows[:, None] + offsets[None, :])[:, :, None]          # (P, w, 1)
    col_index = (cols[:, None] + offsets[None, :])[:, None, :]          # (P, 1, w)
    patches = padded[batch_index[:, None, None], :, row_index, col_index]  # (P, w, w, C)
    return patches.permute(0, 3, 1, 2)
