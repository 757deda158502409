"""TensorMask: A Foundation for Dense Object Segmentation (Chen, Girshick, He & Dollár, ICCV 2019, arXiv:1903.12174).

The one idea: dense sliding-window instance segmentation in which the output at every position is itself a
mask. Each pyramid level predicts a 4-D tensor ``(V, U, H, W)``, a ``V x U`` window mask at each of the
``H x W`` positions, and the geometry of the two pairs of spatial dimensions is made explicit (Sec. 3):

- *natural* representation: the ``(V, U)`` sub-tensor at ``(y, x)`` is the window centred there; with the
  units of ``(V, U)`` and ``(H, W)`` equal, its cell ``(v, u)`` is the pixel ``(y + v - V//2, x + u - U//2)``;
- *aligned* representation: the ``(V, U)`` sub-tensor at pixel ``(y, x)`` holds that pixel's value in every
  window overlapping it; its cell ``(v, u)`` belongs to the window centred at ``(y - v + V//2, x - u + U//2)``;
- :func:`align2nat` and :func:`nat2align` map one to the other: ``F(v, u, y, x) = F^(v, u, y + v - V//2,
  x + u - U//2)`` (cells that fall off the map take a fill value);
- :func:`swap_align2nat` (scale ``λ``): an aligned tensor on a fine grid whose window cells are ``λ`` pixels
  wide becomes a natural tensor on the ``λ``-times coarser grid with ``λV x λU`` windows of one-pixel cells,
  i.e. the units of ``(V, U)`` and ``(H, W)`` swap. It is bilinear upsampling of ``(V, U)`` by ``λ``, then
  align2nat, then keeping every ``λ``-th position, done as one gather (windows of odd size make the spatial
  shifts whole pixels, so only ``(V, U)`` is interpolated);
- *tensor bipyramid*: level ``k`` (P2-P7, stride ``4 · 2^k``) predicts ``2^k V x 2^k U`` masks on its
  ``H/2^k x W/2^k`` grid, so a window always has one cell per stride-4 pixel and large objects get large masks.
  The paper's best head (*aligned* + bipyramid) upsamples each level's mask features to stride 4, adds the
  stride-4 features, fuses them with a 3x3 convolution, predicts an aligned ``V x U`` tensor there with a
  1x1 convolution (cells ``2^k`` pixels wide) and swap_align2nat's it to the level. ``aligned=False`` gives the
  *natural* head (a 1x1 convolution on the level, its ``(V, U)`` upsampled bilinearly by ``2^k``);
  ``bipyramid=False`` the feature-pyramid baseline (``V x U`` masks on every level, cells one level-stride wide).

The model (defaults: the reference implementation's configuration, detectron2 ``projects/TensorMask``
``Base-TensorMask.yaml``):

- Backbone: ResNet-50-FPN, 256 channels, P2-P7 (P6, P7 by stride-2 convolutions on C5), 800 x 1333 input.
- Windows: two per position, ``11 x 11`` and ``15 x 15`` cells at P2 (44 and 60 pixels), doubling per level;
  the window is also the anchor box of the class and box heads.
- Heads shared over the levels: class (4 x 3x3 conv, 256 channels, ReLU), box (4 x 3x3, 128) and mask
  (4 x 3x3, 128) towers; class scores (sigmoid, prior 0.01), box deltas (weights 1.5, 1.5, 0.75, 0.75) and
  one 1x1 mask predictor per window size, with the 3x3 fuse convolution of the bipyramid.
- Labels (the paper's containment, centrality and uniqueness rules): a window is positive for a ground truth when it contains its box, its centre is within
  one level stride of the box centre, and its size less one stride is at most twice the box's longer side
  (small boxes may use the smallest window); a window positive for two boxes is negative (uniqueness).
- Losses: FL* focal loss (RetinaNet, appendix; ``γ = 3``, ``α = 0.3``) for the classes, L1 for the box
  deltas, and per-pixel BCE on the positive windows against the ground-truth mask resampled into the window
  (foreground pixels weighted 1.5, mean over the window, weight 2), all divided by the number of positives.
- Inference: sigmoid scores above 0.05, the 1000 x levels best over all levels, box decoding, class-wise
  NMS at IoU 0.5, the top 100; each one's window mask (sigmoid) is pasted bilinearly into its window box and
  returned as probabilities (zero outside the window).

Reduced variants for a CPU take a lighter ``backbone`` (``"resnet18"``, ``"mobilenet_v3_large"``), fewer
``fpn_channels`` / ``*_channels`` / ``num_convs``, fewer ``num_levels`` (P2 upwards), other odd
``window_sizes`` and a ``fixed_size`` / ``min_size`` / ``max_size`` input.

What differs from the paper and its reference code: the FPN sums its top-down path (detectron2's
TensorMask averages it); window and pixel centres sit at ``(i + 0.5) · stride`` (detectron2 puts anchors at
``i · stride``); ``swap_align2nat`` clamps ``(V, U)`` at the window border (as ``F.interpolate`` does) where
the reference blends with the fill value, and it is plain PyTorch (a gather) rather than a CUDA kernel;
window cells off the feature map take the logit ``mask_fill = -6`` as in the reference. Without ImageNet
weights BatchNorm trains (frozen with them, as in the paper); the training schedule and scale augmentation
are the trainer's, not the model's.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, roi_align

from ..errors import PixelsegError, closest
from .modules.detection import check_num_classes, check_rgb, class_names_or_default
from .modules.one_stage import OneStageInstanceModel, Target, empty_detections, stride4_pyramid
from .registry import register

BASE_STRIDE = 4  # P2: the unit of the bipyramid's window cells

# ---- Sec. 3: the natural and aligned representations of a (V, U, H, W) mask tensor ---------------------------------


def _check_windows(tensor: Tensor, name: str) -> None:
    if tensor.dim() != 5:
        raise PixelsegError(f"{name} takes (B, V, U, H, W) mask tensors, got shape {tuple(tensor.shape)}")
    if tensor.shape[1] % 2 == 0 or tensor.shape[2] % 2 == 0:
        raise PixelsegError(f"{name} needs windows of odd size (centred on a pixel), got "
                            f"{tensor.shape[1]} x {tensor.shape[2]}")


def _resample_rows(tensor: Tensor, rows: Tensor, sources: Tensor, weights: Tensor, fill: float) -> Tensor:
    """``(B, V, U, H, W) -> (B, V', U, H', W)``: ``out[:, i, :, r] = sum_t weights[i, t] tensor[:, sources[i, t], :,
    rows[i, r]]``, or ``fill`` where ``rows[i, r]`` is off the grid."""
    height = tensor.shape[3]
    inside = (rows >= 0) & (rows < height)
    rows = rows.clamp(0, height - 1)
    out = 0
    for term in range(sources.shape[1]):
        picked = tensor[:, sources[:, term, None], :, rows]  # (V', H', B, U, W)
        out = out + weights[:, term, None, None, None, None] * picked
    out = out.permute(2, 0, 3, 1, 4)
    return out.masked_fill(~inside[None, :, None, :, None], fill)


def _resample(tensor: Tensor, row_map: tuple[Tensor, Tensor, Tensor], col_map: tuple[Tensor, Tensor, Tensor],
              fill: float) -> Tensor:
    """:func:`_resample_rows` on ``(V, H)`` with ``row_map``, then on ``(U, W)`` with ``col_map``."""
    tensor = _resample_rows(tensor, *row_map, fill)
    return _resample_rows(tensor.permute(0, 2, 1, 4, 3), *col_map, fill).permute(0, 2, 1, 4, 3)


def _shift_map(window: int, size: int, sign: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    offsets = torch.arange(window, device=device) - window // 2
    rows = torch.arange(size, device=device)[None] + sign * offsets[:, None]
    return rows, torch.arange(window, device=device)[:, None], torch.ones(window, 1, device=device)


def align2nat(aligned: Tensor, fill: float = 0.0) -> Tensor:
    """Aligned ``(B, V, U, H, W)`` to natural: ``F(v, u, y, x) = F^(v, u, y + v - V//2, x + u - U//2)``."""
    _check_windows(aligned, "align2nat")
    windows_v, windows_u, height, width = aligned.shape[1:]
    return _resample(aligned, _shift_map(windows_v, height, 1, aligned.device),
                     _shift_map(windows_u, width, 1, aligned.device), fill)


def nat2align(natural: Tensor, fill: float = 0.0) -> Tensor:
    """Natural ``(B, V, U, H, W)`` to aligned: ``F^(v, u, y, x) = F(v, u, y - v + V//2, x - u + U//2)``."""
    _check_windows(natural, "nat2align")
    windows_v, windows_u, height, width = natural.shape[1:]
    return _resample(natural, _shift_map(windows_v, height, -1, natural.device),
                     _shift_map(windows_u, width, -1, natural.device), fill)


def _swap_map(window: int, scale: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    cells = torch.arange(scale * window, device=device)
    # fine cell v of the window at coarse position y is the fine pixel scale*y + v - scale*(V-1)/2 ...
    rows = scale * torch.arange(out_size, device=device)[None] + cells[:, None] - scale * (window - 1) // 2
    # ... and sits at (v + 0.5) / scale - 0.5 in the coarse (V, U) cells (bilinear, clamped at the border)
    source = ((cells + 0.5) / scale - 0.5).clamp(0, window - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=window - 1)
    frac = source - low
    return rows, torch.stack([low, high], 1), torch.stack([1 - frac, frac], 1)


def swap_align2nat(aligned: Tensor, scale: int, fill: float = 0.0,
                   size: tuple[int, int] | None = None) -> Tensor:
    """Aligned ``(B, V, U, H, W)`` with cells ``scale`` pixels wide to natural ``(B, λV, λU, H/λ, W/λ)`` with
    one-pixel cells (``λ = scale``; ``size`` the output grid, ``ceil(H/λ), ceil(W/λ)`` by default)."""
    _check_windows(aligned, "swap_align2nat")
    windows_v, windows_u, height, width = aligned.shape[1:]
    out_h, out_w = size or (math.ceil(height / scale), math.ceil(width / scale))
    return _resample(aligned, _swap_map(windows_v, scale, out_h, aligned.device),
                     _swap_map(windows_u, scale, out_w, aligned.device), fill)


def upsample_windows(natural: Tensor, scale: int) -> Tensor:
    """Natural ``(B, V, U, H, W)`` to ``(B, λV, λU, H, W)``: bilinear upsampling of the window dimensions only."""
    batch, windows_v, windows_u, height, width = natural.shape
    flat = natural.permute(0, 3, 4, 1, 2).reshape(batch * height * width, 1, windows_v, windows_u)
    flat = F.interpolate(flat, scale_factor=scale, mode="bilinear", align_corners=False)
    return flat.reshape(batch, height, width, scale * windows_v, scale * windows_u).permute(0, 3, 4, 1, 2)


# ---- windows, their labels, and masks pasted back into the image ----------------------------------------------------


def window_boxes(grid_sizes: list[tuple[int, int]], window_pixels: list[list[float]],
                 strides: list[int], device: torch.device | None = None) -> Tensor:
    """``(N, 4)`` window boxes x1, y1, x2, y2 in head-output order (level, row, column, window); the window of
    cell ``(y, x)`` at stride ``s`` is centred at ``((x + 0.5) s, (y + 0.5) s)``."""
    out = []
    for (height, width), sizes, stride in zip(grid_sizes, window_pixels, strides, strict=True):
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
        cy, cx = (c.reshape(-1, 1) for c in torch.meshgrid(ys, xs, indexing="ij"))
        half = torch.tensor(sizes, device=device, dtype=torch.float32)[None] / 2
        out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], -1).reshape(-1, 4))
    return torch.cat(out)


def assign_windows(gt_boxes: Tensor, windows: Tensor, strides: Tensor, smallest_window: float,
                   scale_limit: float = 2.0, centre_limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """The paper's label assignment: per window its matched box index and whether it is positive.

    A window is positive for a box when it contains the box, its centre lies within ``centre_limit`` strides
    (L2) of the box centre, its size less one stride is at most ``scale_limit`` times the box's longer side
    (or ``smallest_window`` less the base stride for small boxes), and no other box meets these three.
    """
    if len(gt_boxes) == 0:
        zeros = torch.zeros(len(windows), dtype=torch.int64, device=windows.device)
        return zeros, zeros.bool()
    contains = ((windows[None, :, :2] <= gt_boxes[:, None, :2]).all(-1)
                & (windows[None, :, 2:] >= gt_boxes[:, None, 2:]).all(-1))  # (G, N)
    longer_side = (gt_boxes[:, 2:] - gt_boxes[:, :2]).max(dim=1).values
    limit = (scale_limit * longer_side).clamp(min=smallest_window - BASE_STRIDE)
    window_side = (windows[:, 2:] - windows[:, :2]).max(dim=1).values - strides
    fits = window_side[None] <= limit[:, None]
    offset = ((gt_boxes[:, None, :2] + gt_boxes[:, None, 2:]) - (windows[None, :, :2] + windows[None, :, 2:])) / 2
    central = (offset / strides[None, :, None]).square().sum(-1) <= centre_limit ** 2
    meets = contains & fits & central
    return meets.int().argmax(dim=0), meets.sum(dim=0) == 1


def _bilinear_weights(low: Tensor, high: Tensor, cells: int, length: int) -> Tensor:
    """``(n, length, cells)``: how much each of ``cells`` equal cells spanning ``[low, high]`` contributes to each
    pixel centre ``0.5, 1.5, ...`` (the tent of bilinear interpolation, zero beyond the outer cell centres' reach)."""
    centres = torch.arange(length, device=low.device, dtype=low.dtype) + 0.5
    position = (centres[None] - low[:, None]) / ((high - low)[:, None] / cells) - 0.5  # in cell units
    return (1 - (position[:, :, None] - torch.arange(cells, device=low.device)).abs()).clamp(min=0)


def paste_windows(masks: Tensor, windows: Tensor, size: tuple[int, int]) -> Tensor:
    """``(n, M, M')`` window masks pasted bilinearly into ``(n, H, W)`` images at their ``(n, 4)`` window
    boxes, zero outside (``grid_sample`` with zero padding, as two matrix products)."""
    rows = _bilinear_weights(windows[:, 1], windows[:, 3], masks.shape[1], size[0])  # (n, H, M)
    cols = _bilinear_weights(windows[:, 0], windows[:, 2], masks.shape[2], size[1])  # (n, W, M')
    return rows @ masks @ cols.transpose(1, 2)


def sigmoid_focal_loss_star(logits: Tensor, targets: Tensor, alpha: float = 0.3, gamma: float = 3.0) -> Tensor:
    """FL* (Lin et al., RetinaNet, arXiv:1708.02002, appendix A), summed: ``-α_t log(sigmoid(γ x_t)) / γ`` with
    ``x_t = x`` for a positive and ``-x`` for a negative target."""
    shifted = gamma * logits * (2 * targets - 1)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (-alpha_t * F.logsigmoid(shifted) / gamma).sum()


# ---- the heads and the model ---------------------------------------------------------------------------------------


def _tower(in_channels: int, channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TensorMaskHead(nn.Module):
    """Class, box and mask towers shared over the levels; per level the class logits ``(B, H*W*A, K)``, box
    deltas ``(B, H*W*A, 4)`` and, per window size, natural mask logits ``(B, M, M, H, W)``."""

    def __init__(self, in_channels: int, num_classes: int, window_sizes: tuple[int, ...], *, class_channels: int,
                 box_channels: int, mask_channels: int, num_convs: int, aligned: bool, bipyramid: bool,
                 mask_fill: float) -> None:
        super().__init__()
        self.num_classes, self.window_sizes = num_classes, window_sizes
        self.aligned, self.bipyramid, self.mask_fill = aligned, bipyramid, mask_fill
        num_windows = len(window_sizes)
        tower_out = {"class": class_channels, "box": box_channels, "mask": mask_channels}
        if num_convs == 0:
            tower_out = dict.fromkeys(tower_out, in_channels)
        self.class_tower = _tower(in_channels, class_channels, num_convs)
        self.class_logits = nn.Conv2d(tower_out["class"], num_windows * num_classes, 3, padding=1)
        self.box_tower = _tower(in_channels, box_channels, num_convs)
        self.box_deltas = nn.Conv2d(tower_out["box"], num_windows * 4, 3, padding=1)
        self.mask_tower = _tower(in_channels, mask_channels, num_convs)
        self.mask_fuse = _tower(tower_out["mask"], tower_out["mask"], 1) if aligned and bipyramid else None
        self.mask_predictors = nn.ModuleList(nn.Conv2d(tower_out["mask"], size * size, 1) for size in window_sizes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.class_logits.bias, -math.log(99.0))  # prior probability 0.01 (RetinaNet)

    @staticmethod
    def _flat(x: Tensor, per_window: int) -> Tensor:  # (B, A*n, H, W) -> (B, H*W*A, n)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_window)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        classes = torch.cat([self._flat(self.class_logits(self.class_tower(f)), self.num_classes) for f in features], 1)
        boxes = torch.cat([self._flat(self.box_deltas(self.box_tower(f)), 4) for f in features], 1)
        mask_features = [self.mask_tower(f) for f in features]
        base = mask_features[0]
        masks = []
        for level, feature in enumerate(mask_features):
            scale = 2 ** level
            if self.mask_fuse is not None:  # the bipyramid's aligned head: predict at stride 4, swap to the level
                upsampled = F.interpolate(feature, scale_factor=scale, mode="bilinear", align_corners=False) \
                    if level else feature
                fused = self.mask_fuse(upsampled[..., : base.shape[-2], : base.shape[-1]] + base)
            level_masks = []
            for size, predict in zip(self.window_sizes, self.mask_predictors, strict=True):
                if self.mask_fuse is not None:
                    aligned = predict(fused).unflatten(1, (size, size))  # cells `scale` stride-4 pixels wide
                    natural = swap_align2nat(aligned, scale, self.mask_fill, tuple(feature.shape[-2:]))
                elif self.aligned:
                    natural = align2nat(predict(feature).unflatten(1, (size, size)), self.mask_fill)
                else:
                    natural = predict(feature).unflatten(1, (size, size))
                    if self.bipyramid and scale > 1:
                        natural = upsample_windows(natural, scale)
                level_masks.append(natural)
            masks.append(level_masks)
        return classes, boxes, masks


class TensorMask(OneStageInstanceModel):
    """TensorMask (Chen et al., 2019): dense (V, U, H, W) window masks on a tensor bipyramid; see the module
    docstring."""

    def __init__(self, num_classes: int, *, backbone: str = "resnet50", backbone_weights: str | None = None,
                 fpn_channels: int = 256, num_levels: int = 6, window_sizes: tuple[int, ...] = (11, 15),
                 class_channels: int = 256, box_channels: int = 128, mask_channels: int = 128, num_convs: int = 4,
                 aligned: bool = True, bipyramid: bool = True, min_size: int = 800, max_size: int = 1333,
                 fixed_size: int | None = None, focal_alpha: float = 0.3, focal_gamma: float = 3.0,
                 box_weights: tuple[float, ...] = (1.5, 1.5, 0.75, 0.75), mask_weight: float = 2.0,
                 mask_positive_weight: float = 1.5, mask_fill: float = -6.0, score_threshold: float = 0.05,
                 candidates_per_level: int = 1000, nms_threshold: float = 0.5,
                 detections_per_image: int = 100) -> None:
        check_num_classes(num_classes)
        if not window_sizes or any(int(s) != s or s < 1 or s % 2 == 0 for s in window_sizes):
            raise PixelsegError(f"window_sizes must be odd cell counts (a window centred on a pixel), got "
                                f"{list(window_sizes)}")
        if len(box_weights) != 4:
            raise PixelsegError(f"box_weights needs 4 values (x, y, w, h), got {list(box_weights)}")
        transform = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                             fixed_size=(fixed_size, fixed_size) if fixed_size else None)
        super().__init__(stride4_pyramid(backbone, fpn_channels, backbone_weights, num_levels), transform)
        self.num_classes, self.num_levels = num_classes, num_levels
        self.window_sizes = tuple(int(s) for s in window_sizes)
        self.strides = [BASE_STRIDE * 2 ** level for level in range(num_levels)]
        self.bipyramid = bipyramid
        self.head = TensorMaskHead(fpn_channels, num_classes - 1, self.window_sizes, class_channels=class_channels,
                                   box_channels=box_channels, mask_channels=mask_channels, num_convs=num_convs,
                                   aligned=aligned, bipyramid=bipyramid, mask_fill=mask_fill)
        self.box_coder = BoxCoder(tuple(float(w) for w in box_weights))
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.mask_weight, self.mask_positive_weight = mask_weight, mask_positive_weight
        self.score_threshold, self.candidates_per_level = score_threshold, candidates_per_level
        self.nms_threshold, self.detections_per_image = nms_threshold, detections_per_image

    def window_pixels(self) -> list[list[float]]:
        """Per level the side in pixels of each window: ``V`` stride-4 cells, doubling per level."""
        return [[float(size * BASE_STRIDE * 2 ** level) for size in self.window_sizes] for level in range(self.num_levels)]

    def mask_cells(self, level: int, window: int) -> int:
        """Cells per side of window ``window``'s masks at ``level``: ``2^level V`` on the bipyramid, else ``V``."""
        return self.window_sizes[window] * (2 ** level if self.bipyramid else 1)

    def _windows(self, features: list[Tensor]) -> tuple[Tensor, Tensor, list[int]]:
        """All windows ``(N, 4)``, their strides ``(N,)`` and the index where each level's windows start."""
        grids = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        windows = window_boxes(grids, self.window_pixels(), self.strides, features[0].device)
        counts = [h * w * len(self.window_sizes) for h, w in grids]
        strides = torch.cat([torch.full((n,), float(s), device=windows.device) for n, s in zip(counts, self.strides,
                                                                                                strict=True)])
        starts = [sum(counts[:level]) for level in range(len(counts))]
        return windows, strides, starts

    def _locate(self, index: Tensor, starts: list[int], grid_width: int, level: int) -> tuple[Tensor, Tensor, Tensor]:
        """Window indices of ``level`` to (window size index, row, column)."""
        local = index - starts[level]
        num_windows = len(self.window_sizes)
        position = local // num_windows
        return local % num_windows, position // grid_width, position % grid_width

    def compute_losses(self, features: list[Tensor], batch_size: torch.Size, image_sizes: list[tuple[int, int]],
                       targets: list[Target]) -> dict[str, Tensor]:
        classes, deltas, masks = self.head(features)
        windows, strides, starts = self._windows(features)
        smallest = min(self.window_sizes) * BASE_STRIDE
        class_loss = box_loss = mask_loss = classes.new_zeros(())
        num_positives = 0
        for image, target in enumerate(targets):
            matched, positive = assign_windows(target["boxes"], windows, strides, smallest)
            one_hot = torch.zeros_like(classes[image])
            one_hot[positive, target["labels"][matched[positive]] - 1] = 1.0
            class_loss = class_loss + sigmoid_focal_loss_star(classes[image], one_hot, self.focal_alpha,
                                                              self.focal_gamma)
            if not positive.any():
                continue
            num_positives += int(positive.sum())
            encoded = self.box_coder.encode_single(target["boxes"][matched[positive]], windows[positive])
            box_loss = box_loss + F.l1_loss(deltas[image][positive], encoded, reduction="sum")
            mask_loss = mask_loss + self._mask_loss(masks, image, target, matched, positive, windows, starts, features)
        # every head output stays in the graph (zero gradients, not none, where no window is positive)
        box_loss = box_loss + deltas.sum() * 0.0
        mask_loss = mask_loss + sum(m.sum() for level in masks for m in level) * 0.0
        normaliser = max(num_positives, 1)
        return {"loss_classifier": class_loss / normaliser, "loss_box_reg": box_loss / normaliser,
                "loss_mask": self.mask_weight * mask_loss / normaliser}

    def _mask_loss(self, masks: list[list[Tensor]], image: int, target: Target, matched: Tensor, positive: Tensor,
                   windows: Tensor, starts: list[int], features: list[Tensor]) -> Tensor:
        """Per-pixel BCE of the positive windows' natural masks against the ground truth resampled into them,
        foreground pixels weighted ``mask_positive_weight``, averaged over each window, summed."""
        gt_masks = target["masks"][:, None].float()
        positive_index = positive.nonzero()[:, 0]
        total = windows.new_zeros(())
        for level in range(self.num_levels):
            end = starts[level + 1] if level + 1 < self.num_levels else len(windows)
            here = positive_index[(positive_index >= starts[level]) & (positive_index < end)]
            if len(here) == 0:
                continue
            window, row, col = self._locate(here, starts, int(features[level].shape[-1]), level)
            for size_index in range(len(self.window_sizes)):
                chosen = window == size_index
                if not chosen.any():
                    continue
                cells = self.mask_cells(level, size_index)
                logits = masks[level][size_index][image].permute(2, 3, 0, 1)[row[chosen], col[chosen]]  # (P, M, M)
                boxes = torch.cat([matched[here[chosen], None].to(windows.dtype), windows[here[chosen]]], 1)
                truth = roi_align(gt_masks, boxes, (cells, cells), 1.0, 0, aligned=True)[:, 0].ge(0.5).to(logits.dtype)
                bce = F.binary_cross_entropy_with_logits(
                    logits, truth, pos_weight=logits.new_tensor(self.mask_positive_weight), reduction="sum")
                total = total + bce / cells ** 2
        return total

    @torch.no_grad()
    def detect(self, features: list[Tensor], batch_size: torch.Size,
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        classes, deltas, masks = self.head(features)
        windows, _, starts = self._windows(features)
        height, width = int(batch_size[0]), int(batch_size[1])
        num_classes = classes.shape[-1]
        results = []
        for image, (image_h, image_w) in enumerate(image_sizes):
            probabilities = classes[image].sigmoid().flatten()
            candidates = (probabilities > self.score_threshold).nonzero()[:, 0]
            if len(candidates) == 0:
                results.append(empty_detections(height, width, classes.device))
                continue
            top = probabilities[candidates].topk(min(self.candidates_per_level * self.num_levels, len(candidates)))
            scores, candidates = top.values, candidates[top.indices]
            window_index, labels = candidates // num_classes, candidates % num_classes + 1
            boxes = self.box_coder.decode_single(deltas[image][window_index], windows[window_index])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_h)
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            kept_windows = window_index[keep]
            pasted = torch.zeros(len(keep), height, width, device=classes.device)
            for level in range(self.num_levels):
                end = starts[level + 1] if level + 1 < self.num_levels else len(windows)
                at_level = ((kept_windows >= starts[level]) & (kept_windows < end)).nonzero()[:, 0]
                if len(at_level) == 0:
                    continue
                window, row, col = self._locate(kept_windows[at_level], starts, int(features[level].shape[-1]), level)
                for size_index in range(len(self.window_sizes)):
                    chosen = at_level[window == size_index]
                    if len(chosen) == 0:
                        continue
                    picked = window == size_index
                    logits = masks[level][size_index][image].permute(2, 3, 0, 1)[row[picked], col[picked]]
                    pasted[chosen] = paste_windows(logits.sigmoid(), windows[kept_windows[chosen]], (height, width))
            results.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep],
                            "masks": pasted[:, None]})
        return results


@register("tensormask", paper="Chen, Girshick, He & Dollár, TensorMask: A Foundation for Dense Object "
                              "Segmentation, ICCV 2019, arXiv:1903.12174")
def tensormask(num_classes: int, in_channels: int = 3, *, class_names: list[str] | None = None,
               **kwargs: Any) -> TensorMask:
    """TensorMask (:class:`TensorMask`'s keywords; the defaults are the reference ResNet-50-FPN bipyramid)."""
    check_rgb(in_channels, "tensormask")
    known = set(inspect.signature(TensorMask.__init__).parameters) - {"self", "num_classes"}
    for key in sorted(set(kwargs) - known):
        raise PixelsegError(f"unknown TensorMask keyword '{key}'{closest(key, sorted(known))}")
    for key in ("window_sizes", "box_weights"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    model = TensorMask(num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    return model
