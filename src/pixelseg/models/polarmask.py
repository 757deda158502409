"""PolarMask: Single Shot Instance Segmentation with Polar Representation (Xie, Sun, Song, Wang, Liu, Liang,
Shen & Luo, CVPR 2020, arXiv:1909.13226).

The one idea: describe an instance by its centre and the lengths of ``n = 36`` rays at equal angles (10°)
to its contour, so instance segmentation becomes anchor-free dense regression like FCOS detection (Tian et
al., ICCV 2019, arXiv:1904.01355): every position of P3-P7 predicts a class, a *polar centre-ness* and 36
ray lengths, and the mask is the polygon through the 36 ray end points.

- Backbone: ResNet-50-FPN with P3-P7 (P6, P7 from P5), 800 x 1333 input; ``backbone`` takes ``"resnet101"``
  and light ``"resnet18"`` / ``"mobilenet_v3_large"`` variants.
- Head shared over the levels: a classification tower and a mask (ray) tower of four 3x3 convolutions with
  GroupNorm and ReLU; the class scores (sigmoid, focal loss) and centre-ness come from the first, the rays
  ``exp(s_l x)`` (a learnt scale per level) from the second.
- Targets: a position is positive for an instance when it lies inside the instance's mask and within 1.5
  strides of its *mass centre*, and the longest ray falls in the level's range (0-64-128-256-512-inf, as
  FCOS); a position claimed by several instances takes the smallest. Each ray's target is the distance from
  the position to the farthest point of the mask along it, i.e. the longest ray that still hits the contour
  at that angle (rays are marched in half-pixel steps over the mask, where the paper searches the contour
  points at that angle).
- Losses: focal loss for the classes, BCE for the polar centre-ness ``sqrt(min d / max d)``, and the polar
  IoU loss ``log(sum max(d, d*) / sum min(d, d*))`` over the rays, weighted by the centre-ness targets.
- Inference: score = class probability x centre-ness, the best 1000 per level above 0.05, NMS on the boxes
  around the polygons at IoU 0.5, the top 100; each polygon is rasterised into a binary mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, sigmoid_focal_loss

from ..errors import PixelsegError
from .modules.detection import check_num_classes, check_rgb, class_names_or_default
from .modules.one_stage import (
    PYRAMID_STRIDES,
    OneStageInstanceModel,
    Target,
    empty_detections,
    retina_pyramid,
)
from .registry import register

INF = 1e8


def ray_angles(num_rays: int = 36, device: torch.device | None = None) -> Tensor:
    """``num_rays`` equal angles from 0 (x to the right; y points down the image)."""
    return torch.arange(num_rays, device=device, dtype=torch.float32) * (2 * math.pi / num_rays)


def polar_centerness(rays: Tensor) -> Tensor:
    """``sqrt(min / max)`` of each row of ray lengths ``(..., n)``: 1 at the centre of a disc."""
    return (rays.min(dim=-1).values / rays.max(dim=-1).values.clamp(min=1e-6)).clamp(min=0).sqrt()


def polar_iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``log(sum max(d, d*) / sum min(d, d*))`` per row of ``(N, n)`` ray lengths (the polar IoU's -log)."""
    total_max = torch.maximum(pred, target).sum(dim=-1)
    total_min = torch.minimum(pred, target).sum(dim=-1).clamp(min=1e-6)
    return (total_max / total_min).log()


def ray_lengths(mask: Tensor, points: Tensor, num_rays: int = 36, step: float = 0.5) -> Tensor:
    """``(P, n)`` distances from ``(P, 2)`` points (x, y) to the farthest pixel of the boolean ``(H, W)``
    ``mask`` along each of ``num_rays`` rays; the pixel's far edge is reached by adding half a pixel."""
    height, width = mask.shape
    if len(points) == 0:
        return mask.new_zeros(0, num_rays, dtype=torch.float32)
    angles = ray_angles(num_rays, mask.device)
    rows_hit, cols_hit = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
    if len(rows_hit) == 0:
        return mask.new_full((len(points), num_rays), 1e-2, dtype=torch.float32)
    # a point inside the mask reaches no farther than the diagonal of the mask's box
    reach = math.hypot(int(rows_hit[-1] - rows_hit[0]) + 1, int(cols_hit[-1] - cols_hit[0]) + 1)
    steps = torch.arange(0.0, reach + step, step, device=mask.device)  # (S,)
    xs = points[:, 0, None, None] + torch.cos(angles)[None, :, None] * steps  # (P, n, S)
    ys = points[:, 1, None, None] + torch.sin(angles)[None, :, None] * steps
    cols, rows = xs.floor().long(), ys.floor().long()
    valid = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    inside = mask[rows.clamp(0, height - 1), cols.clamp(0, width - 1)] & valid
    farthest = torch.where(inside, steps, torch.full_like(steps, -1.0)).max(dim=-1).values
    return (farthest + 0.5).clamp(min=1e-2)


def rasterise_polygons(centres: Tensor, rays: Tensor, size: tuple[int, int]) -> Tensor:
    """Binary ``(N, H, W)`` masks of the star-shaped polygons through ``centre + d_i (cos θ_i, sin θ_i)``.

    A pixel centre at distance ``r`` and angle ``φ`` from the centre, between rays ``i`` and ``i + 1``, is
    inside when ``r`` is at most the distance to the polygon edge joining their end points at that angle.
    Each polygon is filled inside its bounding box only.
    """
    height, width = size
    num_rays = rays.shape[1]
    delta = 2 * math.pi / num_rays
    angles = ray_angles(num_rays, rays.device)
    masks = torch.zeros(len(rays), height, width, dtype=torch.bool, device=rays.device)
    xs_end = centres[:, 0:1] + rays * torch.cos(angles)
    ys_end = centres[:, 1:2] + rays * torch.sin(angles)
    for index in range(len(rays)):
        x0 = int(xs_end[index].min().floor().clamp(0, width))
        x1 = int(xs_end[index].max().ceil().clamp(0, width))
        y0 = int(ys_end[index].min().floor().clamp(0, height))
        y1 = int(ys_end[index].max().ceil().clamp(0, height))
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = torch.meshgrid(torch.arange(y0, y1, device=rays.device) + 0.5,
                                torch.arange(x0, x1, device=rays.device) + 0.5, indexing="ij")
        dx, dy = xs - centres[index, 0], ys - centres[index, 1]
        phi = torch.atan2(dy, dx) % (2 * math.pi)
        sector = (phi / delta).floor().long().clamp(max=num_rays - 1)
        t = phi - sector * delta
        d_a, d_b = rays[index][sector], rays[index][(sector + 1) % num_rays]
        edge = d_a * d_b * math.sin(delta) / (d_a * torch.sin(t) + d_b * torch.sin(delta - t)).clamp(min=1e-6)
        masks[index, y0:y1, x0:x1] = dx.square() + dy.square() <= edge.square()
    return masks


class Scale(nn.Module):
    """A learnt scalar per pyramid level (FCOS)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, depth: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(32, channels),
                                                                                         channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PolarHead(nn.Module):
    """FCOS-style head shared over P3-P7: classes and centre-ness on one tower, ``n`` rays on the other."""

    def __init__(self, channels: int, num_classes: int, num_rays: int, num_levels: int = 5) -> None:
        super().__init__()
        self.cls_tower, self.mask_tower = _tower(channels), _tower(channels)
        self.classes = nn.Conv2d(channels, num_classes - 1, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.rays = nn.Conv2d(channels, num_rays, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.classes.bias, -math.log(99.0))  # prior probability 0.01 (RetinaNet)

    @staticmethod
    def _flat(x: Tensor) -> Tensor:  # (B, n, H, W) -> (B, H*W, n)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        classes, centerness, rays = [], [], []
        for feature, scale in zip(features, self.scales, strict=True):
            cls_feature, mask_feature = self.cls_tower(feature), self.mask_tower(feature)
            classes.append(self._flat(self.classes(cls_feature)))
            centerness.append(self._flat(self.centerness(cls_feature))[..., 0])
            rays.append(self._flat(scale(self.rays(mask_feature)).float().clamp(max=20).exp()))
        return classes, centerness, rays


class PolarMask(OneStageInstanceModel):
    """PolarMask (Xie et al., 2020): class, centre-ness and 36 rays per position; see the module docstring."""

    binary_masks = True

    def __init__(self, num_classes: int, *, backbone: str = "resnet50", backbone_weights: str | None = None,
                 fpn_channels: int = 256, num_rays: int = 36, min_size: int = 800, max_size: int = 1333,
                 regress_ranges: tuple[float, ...] = (64, 128, 256, 512), center_radius: float = 1.5,
                 score_threshold: float = 0.05, pre_nms_top_n: int = 1000, nms_threshold: float = 0.5,
                 detections_per_image: int = 100) -> None:
        check_num_classes(num_classes)
        if len(regress_ranges) != len(PYRAMID_STRIDES) - 1:
            raise PixelsegError(f"regress_ranges needs the 4 bounds between P3-P7, got {list(regress_ranges)}")
        transform = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        super().__init__(retina_pyramid(backbone, fpn_channels, backbone_weights), transform)
        self.num_classes, self.num_rays = num_classes, num_rays
        self.head = PolarHead(fpn_channels, num_classes, num_rays, len(PYRAMID_STRIDES))
        bounds = [-1.0, *map(float, regress_ranges), INF]
        self.regress_ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
        self.center_radius, self.score_threshold = center_radius, score_threshold
        self.pre_nms_top_n, self.nms_threshold = pre_nms_top_n, nms_threshold
        self.detections_per_image = detections_per_image

    @staticmethod
    def points(features: list[Tensor]) -> list[Tensor]:
        """Per level the ``(H*W, 2)`` image positions (x, y) of its cells' centres."""
        out = []
        for feature, stride in zip(features, PYRAMID_STRIDES, strict=True):
            height, width = feature.shape[-2:]
            ys = (torch.arange(height, device=feature.device, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(width, device=feature.device, dtype=torch.float32) + 0.5) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            out.append(torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1))
        return out

    def targets(self, points: list[Tensor], target: Target) -> tuple[Tensor, Tensor]:
        """Per position (all levels concatenated): its class (0 background) and its ``n`` ray targets."""
        total = sum(len(p) for p in points)
        device = points[0].device
        labels = torch.zeros(total, dtype=torch.int64, device=device)
        rays = torch.zeros(total, self.num_rays, device=device)
        masks = target["masks"].bool()
        if len(masks) == 0:
            return labels, rays
        height, width = masks.shape[-2:]
        areas = masks.flatten(1).sum(dim=1).float()
        ys, xs = torch.meshgrid(torch.arange(height, device=device) + 0.5, torch.arange(width, device=device) + 0.5,
                                indexing="ij")
        centres = torch.stack([(masks * xs).flatten(1).sum(1), (masks * ys).flatten(1).sum(1)], 1) / \
            areas.clamp(min=1)[:, None]  # mass centres (x, y)
        best_area = torch.full((total,), INF, device=device)
        offset = 0
        for level_points, stride, (low, high) in zip(points, PYRAMID_STRIDES, self.regress_ranges, strict=True):
            near = ((level_points[:, None, :] - centres[None]).abs() <= self.center_radius * stride).all(-1)  # (P, G)
            cols, rows = level_points[:, 0].long(), level_points[:, 1].long()
            on_image = (cols < width) & (rows < height)
            inside = torch.zeros_like(near)
            inside[on_image] = masks[:, rows[on_image], cols[on_image]].t()
            point_index, instance = (near & inside & (areas[None] > 0)).nonzero(as_tuple=True)
            for g in instance.unique().tolist():
                chosen = point_index[instance == g]
                lengths = ray_lengths(masks[g], level_points[chosen], self.num_rays)
                longest = lengths.max(dim=1).values
                fits = (longest > low) & (longest <= high)
                chosen, lengths = chosen[fits] + offset, lengths[fits]
                smaller = areas[g] < best_area[chosen]
                chosen, lengths = chosen[smaller], lengths[smaller]
                best_area[chosen] = areas[g]
                labels[chosen] = target["labels"][g]
                rays[chosen] = lengths
            offset += len(level_points)
        return labels, rays

    def compute_losses(self, features: list[Tensor], batch_size: torch.Size, image_sizes: list[tuple[int, int]],
                       targets: list[Target]) -> dict[str, Tensor]:
        classes, centerness, rays = (torch.cat(x, dim=1) for x in self.head(features))
        points = self.points(features)
        all_labels, all_rays = zip(*(self.targets(points, t) for t in targets), strict=True)
        labels, ray_targets = torch.stack(all_labels), torch.stack(all_rays)
        positive = labels > 0
        num_positives = max(int(positive.sum()), 1)
        one_hot = torch.zeros_like(classes)
        one_hot[positive] = F.one_hot(labels[positive] - 1, self.num_classes - 1).to(classes.dtype)
        losses = {"loss_classifier": sigmoid_focal_loss(classes, one_hot, reduction="sum") / num_positives}
        if not positive.any():
            zero = (rays.sum() + centerness.sum()) * 0.0
            return {**losses, "loss_rays": zero, "loss_centerness": zero}
        target_centerness = polar_centerness(ray_targets[positive])
        weight = target_centerness.sum().clamp(min=1e-6)
        losses["loss_rays"] = (polar_iou_loss(rays[positive], ray_targets[positive]) * target_centerness).sum() / weight
        losses["loss_centerness"] = F.binary_cross_entropy_with_logits(
            centerness[positive], target_centerness, reduction="sum") / num_positives
        return losses

    @torch.no_grad()
    def detect(self, features: list[Tensor], batch_size: torch.Size,
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        classes, centerness, rays = self.head(features)
        points = self.points(features)
        height, width = int(batch_size[0]), int(batch_size[1])
        results = []
        for index, (image_h, image_w) in enumerate(image_sizes):
            found_scores, found_labels, found_points, found_rays = [], [], [], []
            for level in range(len(points)):
                probabilities = classes[level][index].sigmoid()  # (P, C-1)
                candidate = probabilities > self.score_threshold
                scores = (probabilities * centerness[level][index].sigmoid()[:, None])[candidate]
                point_index, label = candidate.nonzero(as_tuple=True)
                top = scores.topk(min(self.pre_nms_top_n, len(scores))).indices
                found_scores.append(scores[top])
                found_labels.append(label[top] + 1)
                found_points.append(points[level][point_index[top]])
                found_rays.append(rays[level][index][point_index[top]])
            scores, labels = torch.cat(found_scores), torch.cat(found_labels)
            if len(scores) == 0:
                results.append(empty_detections(height, width, classes[0].device))
                continue
            centres, lengths = torch.cat(found_points), torch.cat(found_rays)
            angles = ray_angles(self.num_rays, lengths.device)
            xs = (centres[:, 0:1] + lengths * torch.cos(angles)).clamp(0, image_w)
            ys = (centres[:, 1:2] + lengths * torch.sin(angles)).clamp(0, image_h)
            boxes = torch.stack([xs.min(1).values, ys.min(1).values, xs.max(1).values, ys.max(1).values], 1)
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            masks = rasterise_polygons(centres[keep], lengths[keep], (height, width))
            masks[:, image_h:, :] = False
            masks[:, :, image_w:] = False
            results.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep],
                            "masks": masks[:, None].float()})
        return results


@register("polarmask", paper="Xie, Sun, Song, Wang, Liu, Liang, Shen & Luo, PolarMask: Single Shot Instance "
                             "Segmentation with Polar Representation, CVPR 2020, arXiv:1909.13226")
def polarmask(num_classes: int, in_channels: int = 3, *, class_names: list[str] | None = None,
              **kwargs: Any) -> PolarMask:
    """PolarMask (:class:`PolarMask`'s keywords; the defaults are the paper's ResNet-50-FPN at 800 x 1333)."""
    check_rgb(in_channels, "polarmask")
    if "regress_ranges" in kwargs:
        kwargs["regress_ranges"] = tuple(kwargs["regress_ranges"])
    model = PolarMask(num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    return model
