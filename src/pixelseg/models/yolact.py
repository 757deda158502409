"""YOLACT: Real-time Instance Segmentation (Bolya, Zhou, Xiao & Lee, ICCV 2019, arXiv:1904.02689).

The one idea: split instance segmentation into two parallel tasks. A *protonet* predicts ``k = 32``
prototype masks for the whole image once; the detection head predicts, for every anchor, a class, a box
and ``k`` mask coefficients. An instance's mask is the linear combination of the prototypes with its
coefficients, ``sigmoid(P C^T)``, cropped by its box: no RoI pooling, no re-sampling of features.

- Backbone: ResNet-101-FPN with P3-P7 (the paper's main model, 550 x 550 input); ``backbone`` takes
  ``"resnet50"`` and light ``"resnet18"`` / ``"mobilenet_v3_large"`` variants.
- Protonet on P3: three 3x3 convolutions, a 2x bilinear upsample, one 3x3 convolution, a 1x1 to ``k``
  prototypes with ReLU (stride 4).
- Prediction head shared over the levels: a 3x3 convolution, then 3x3 branches for ``C`` class scores
  (background included, softmax), 4 box offsets (SSD encoding, variances 0.1 and 0.2) and ``k`` tanh
  coefficients, for 3 anchors per position (aspect ratios 1, 1/2, 2; sizes 24-384 on P3-P7).
- Training: anchors match a box at IoU >= 0.5 (background below 0.4, ignored between; each box also keeps
  its best anchor). Class loss: softmax cross-entropy with online hard negative mining at 3 negatives per
  positive (the paper's choice, not focal loss); box loss: smooth-L1 (weight 1.5); mask loss: per-pixel
  BCE of the assembled mask against the ground truth at prototype resolution, summed inside the ground-truth
  box and divided by its area (weight 6.125); the optional semantic-segmentation loss (a 1x1 convolution
  on P3, per-class sigmoid BCE, weight 1) trains the features only and is not used at inference.
- Inference: Fast NMS (per class: the IoU matrix of the top 200 detections, upper triangle, max over each
  column, keep at <= 0.5), the top 100 detections, masks assembled, upsampled, cropped by the box. Masks are
  returned as probabilities (cropped, zero outside the box); thresholding at 0.5 is the caller's (the
  instance task and the COCO evaluator do it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou

from ..errors import PixelsegError
from .modules.detection import check_num_classes, check_rgb, class_names_or_default
from .modules.one_stage import (
    PYRAMID_STRIDES,
    OneStageInstanceModel,
    Target,
    empty_detections,
    pad_masks,
    retina_pyramid,
)
from .registry import register

ASPECT_RATIOS = (1.0, 0.5, 2.0)


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200) -> tuple[Tensor, Tensor]:
    """The paper's Fast NMS on per-class candidates: ``boxes`` ``(A, 4)``, ``scores`` ``(C, A)``.

    For each class the ``top_k`` best detections are sorted by score; their IoU matrix ``X`` (C, n, n) keeps
    only its upper triangle (``X[i, j]`` for ``i < j``: a higher-scoring detection ``i`` against ``j``),
    and detection ``j`` is dropped when the column maximum ``max_i X[i, j]`` exceeds ``iou_threshold``. An
    already-suppressed detection may still suppress others (the paper's trade of a little accuracy for
    one matrix operation). Returns the kept ``(class, anchor)`` index pairs' classes and anchor indices.
    """
    top_k = min(top_k, scores.shape[1])
    sorted_scores, order = scores.sort(dim=1, descending=True)
    order, sorted_scores = order[:, :top_k], sorted_scores[:, :top_k]
    candidates = boxes[order]  # (C, n, 4)
    iou = torch.stack([box_iou(b, b) for b in candidates]) if len(candidates) else candidates.new_zeros(0, 0, 0)
    iou = iou.triu(diagonal=1)
    column_max = iou.max(dim=1).values if iou.numel() else sorted_scores.new_zeros(sorted_scores.shape)
    keep = (column_max <= iou_threshold) & (sorted_scores > 0)
    classes = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(keep)
    return classes[keep], order[keep]


def crop(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero ``(N, H, W)`` masks outside their ``(N, 4)`` boxes (pixel edges, mask pixel coordinates)."""
    height, width = masks.shape[-2:]
    cols = torch.arange(width, device=masks.device, dtype=boxes.dtype) + 0.5
    rows = torch.arange(height, device=masks.device, dtype=boxes.dtype) + 0.5
    inside_x = (cols[None] >= boxes[:, 0:1]) & (cols[None] < boxes[:, 2:3])  # (N, W)
    inside_y = (rows[None] >= boxes[:, 1:2]) & (rows[None] < boxes[:, 3:4])  # (N, H)
    return masks * (inside_y[:, :, None] & inside_x[:, None, :])


def _conv_relu(in_channels: int, out_channels: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]


class Protonet(nn.Module):
    """P3 → three 3x3 convs → 2x upsample → 3x3 conv → 1x1 to ``k`` prototypes, ReLU (stride 4)."""

    def __init__(self, channels: int, num_prototypes: int = 32) -> None:
        super().__init__()
        self.head = nn.Sequential(*_conv_relu(channels, channels), *_conv_relu(channels, channels),
                                  *_conv_relu(channels, channels))
        self.tail = nn.Sequential(*_conv_relu(channels, channels), *_conv_relu(channels, num_prototypes, 1))

    def forward(self, p3: Tensor) -> Tensor:
        x = F.interpolate(self.head(p3), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.tail(x)  # (B, k, H/4, W/4)


class PredictionHead(nn.Module):
    """Shared over P3-P7: a 3x3 conv, then class, box and tanh coefficient branches per anchor."""

    def __init__(self, channels: int, num_classes: int, num_prototypes: int, num_anchors: int) -> None:
        super().__init__()
        self.num_classes, self.num_prototypes = num_classes, num_prototypes
        self.upfeature = nn.Sequential(*_conv_relu(channels, channels))
        self.classes = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.boxes = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.coefficients = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    @staticmethod
    def _flat(x: Tensor, per_anchor: int) -> Tensor:  # (B, a*n, H, W) -> (B, H*W*a, n)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_anchor)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        classes, boxes, coefficients = [], [], []
        for feature in features:
            x = self.upfeature(feature)
            classes.append(self._flat(self.classes(x), self.num_classes))
            boxes.append(self._flat(self.boxes(x), 4))
            coefficients.append(self._flat(torch.tanh(self.coefficients(x)), self.num_prototypes))
        return torch.cat(classes, 1), torch.cat(boxes, 1), torch.cat(coefficients, 1)


class YOLACT(OneStageInstanceModel):
    """YOLACT (Bolya et al., 2019): prototypes + per-anchor coefficients; see the module docstring."""

    def __init__(self, num_classes: int, *, backbone: str = "resnet101", backbone_weights: str | None = None,
                 fpn_channels: int = 256, num_prototypes: int = 32,
                 anchor_sizes: tuple[float, ...] = (24, 48, 96, 192, 384), fixed_size: int | None = 550,
                 min_size: int = 550, max_size: int = 550, semantic_weight: float = 1.0,
                 box_weight: float = 1.5, mask_weight: float = 6.125, negatives_per_positive: int = 3,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, nms_top_k: int = 200,
                 detections_per_image: int = 100, masks_to_train: int = 100) -> None:
        check_num_classes(num_classes)
        if len(anchor_sizes) != len(PYRAMID_STRIDES):
            raise PixelsegError(f"anchor_sizes needs one size per level (P3-P7: 5), got {list(anchor_sizes)}")
        transform = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                             fixed_size=(fixed_size, fixed_size) if fixed_size else None)
        super().__init__(retina_pyramid(backbone, fpn_channels, backbone_weights), transform)
        self.num_classes, self.num_prototypes = num_classes, num_prototypes
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.protonet = Protonet(fpn_channels, num_prototypes)
        self.head = PredictionHead(fpn_channels, num_classes, num_prototypes, len(ASPECT_RATIOS))
        self.semantic = nn.Conv2d(fpn_channels, num_classes - 1, 1) if semantic_weight > 0 else None
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))  # SSD's variances 0.1 (centre) and 0.2 (size)
        self.weights = {"semantic": semantic_weight, "box": box_weight, "mask": mask_weight}
        self.negatives_per_positive, self.masks_to_train = negatives_per_positive, masks_to_train
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.nms_top_k, self.detections_per_image = nms_top_k, detections_per_image

    def anchors(self, features: list[Tensor]) -> Tensor:
        """``(A, 4)`` anchors x1, y1, x2, y2 in the order of the head's outputs (level, row, column, ratio)."""
        out = []
        for feature, stride, size in zip(features, PYRAMID_STRIDES, self.anchor_sizes, strict=True):
            height, width = feature.shape[-2:]
            ys = (torch.arange(height, device=feature.device, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(width, device=feature.device, dtype=torch.float32) + 0.5) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            ratios = torch.tensor(ASPECT_RATIOS, device=feature.device)
            half_w, half_h = size * ratios.sqrt() / 2, size / ratios.sqrt() / 2  # ratio = width / height
            cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
            out.append(torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1).reshape(-1, 4))
        return torch.cat(out)

    def _outputs(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        prototypes = self.protonet(features[0]).permute(0, 2, 3, 1)  # (B, H/4, W/4, k)
        classes, boxes, coefficients = self.head(features)
        return prototypes, classes, boxes, coefficients, self.anchors(features)

    def _match(self, anchors: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        """Per anchor: its class (0 background, -1 ignored) and the index of its matched box."""
        if len(target["boxes"]) == 0:
            return torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device), \
                torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
        iou = box_iou(target["boxes"], anchors)  # (G, A)
        best_iou, matched = iou.max(dim=0)
        best_anchor = iou.argmax(dim=1)  # each box keeps its best anchor
        best_iou[best_anchor] = 2.0
        matched[best_anchor] = torch.arange(len(best_anchor), device=anchors.device)
        labels = target["labels"][matched].clone()
        labels[best_iou < 0.5] = -1
        labels[best_iou < 0.4] = 0
        return labels, matched

    def compute_losses(self, features: list[Tensor], batch_size: torch.Size, image_sizes: list[tuple[int, int]],
                       targets: list[Target]) -> dict[str, Tensor]:
        prototypes, classes, boxes, coefficients, anchors = self._outputs(features)
        proto_h, proto_w = prototypes.shape[1:3]
        scale_x, scale_y = proto_w / batch_size[1], proto_h / batch_size[0]
        gt_masks = pad_masks([t["masks"].float() for t in targets], (int(batch_size[0]), int(batch_size[1])))
        class_loss = box_loss = mask_loss = classes.new_zeros(())
        num_positives = 0
        for index, target in enumerate(targets):
            labels, matched = self._match(anchors, target)
            positive = labels > 0
            count = int(positive.sum())
            num_positives += count
            # OHEM: every positive plus the 3x as many negatives with the highest background loss.
            log_probs = F.log_softmax(classes[index], dim=-1)
            background_loss = -log_probs[:, 0].detach()
            background_loss[labels != 0] = -1.0
            hardest = background_loss.argsort(descending=True)[: self.negatives_per_positive * max(count, 1)]
            hardest = hardest[background_loss[hardest] >= 0]
            chosen = torch.cat([positive.nonzero()[:, 0], hardest])
            class_loss = class_loss + F.nll_loss(log_probs[chosen], labels[chosen].clamp(min=0), reduction="sum")
            if count == 0:
                continue
            gt_boxes = target["boxes"][matched[positive]]
            encoded = self.box_coder.encode_single(gt_boxes, anchors[positive])
            box_loss = box_loss + F.smooth_l1_loss(boxes[index][positive], encoded, reduction="sum")
            # Mask loss at prototype resolution, inside each ground-truth box, divided by its area.
            pos_index = positive.nonzero()[:, 0]
            if len(pos_index) > self.masks_to_train:
                pos_index = pos_index[torch.randperm(len(pos_index), device=pos_index.device)[: self.masks_to_train]]
            which = matched[pos_index]
            mask_t = F.interpolate(gt_masks[index][None], size=(proto_h, proto_w), mode="bilinear",
                                   align_corners=False)[0].gt(0.5).float()[which]
            logits = torch.einsum("hwk,nk->nhw", prototypes[index], coefficients[index][pos_index])
            proto_boxes = target["boxes"][which] * torch.tensor([scale_x, scale_y, scale_x, scale_y],
                                                                 device=logits.device)
            bce = crop(F.binary_cross_entropy_with_logits(logits, mask_t, reduction="none"), proto_boxes)
            area = ((proto_boxes[:, 2] - proto_boxes[:, 0]) * (proto_boxes[:, 3] - proto_boxes[:, 1])).clamp(min=1)
            mask_loss = mask_loss + (bce.sum(dim=(1, 2)) / area).sum() * count / len(pos_index)
        denominator = max(num_positives, 1)
        losses = {"loss_classifier": class_loss / denominator,
                  "loss_box_reg": self.weights["box"] * box_loss / denominator,
                  "loss_mask": self.weights["mask"] * mask_loss / denominator}
        if self.semantic is not None:
            losses["loss_semantic"] = self.weights["semantic"] * self._semantic_loss(features[0], gt_masks, targets)
        return losses

    def _semantic_loss(self, p3: Tensor, gt_masks: list[Tensor], targets: list[Target]) -> Tensor:
        logits = self.semantic(p3)  # (B, C-1, H/8, W/8)
        truth = torch.zeros_like(logits)
        for index, target in enumerate(targets):
            if len(target["labels"]) == 0:
                continue
            small = F.interpolate(gt_masks[index][None], size=logits.shape[-2:], mode="bilinear",
                                  align_corners=False)[0].gt(0.5).float()
            for mask, label in zip(small, target["labels"].tolist(), strict=True):
                truth[index, label - 1] = torch.maximum(truth[index, label - 1], mask)
        return F.binary_cross_entropy_with_logits(logits, truth, reduction="sum") / logits[0, 0].numel() / len(truth)

    @torch.no_grad()
    def detect(self, features: list[Tensor], batch_size: torch.Size,
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        prototypes, classes, boxes, coefficients, anchors = self._outputs(features)
        height, width = int(batch_size[0]), int(batch_size[1])
        results = []
        for index, (image_h, image_w) in enumerate(image_sizes):
            scores = F.softmax(classes[index], dim=-1)[:, 1:]  # (A, C-1)
            candidate = scores.max(dim=1).values > self.score_threshold
            if not candidate.any():
                results.append(empty_detections(height, width, classes.device))
                continue
            decoded = self.box_coder.decode_single(boxes[index][candidate], anchors[candidate])
            decoded[:, 0::2] = decoded[:, 0::2].clamp(0, image_w)
            decoded[:, 1::2] = decoded[:, 1::2].clamp(0, image_h)
            class_scores = scores[candidate].t() * (scores[candidate].t() > self.score_threshold)  # (C-1, n)
            kept_classes, kept = fast_nms(decoded, class_scores, self.nms_threshold, self.nms_top_k)
            kept_scores = class_scores[kept_classes, kept]
            order = kept_scores.argsort(descending=True)[: self.detections_per_image]
            kept_classes, kept, kept_scores = kept_classes[order], kept[order], kept_scores[order]
            kept_boxes = decoded[kept]
            logits = torch.einsum("hwk,nk->nhw", prototypes[index], coefficients[index][candidate][kept])
            masks = F.interpolate(logits.sigmoid()[:, None], size=(height, width), mode="bilinear",
                                  align_corners=False)[:, 0]
            results.append({"boxes": kept_boxes, "labels": kept_classes + 1, "scores": kept_scores,
                            "masks": crop(masks, kept_boxes)[:, None]})
        return results


@register("yolact", paper="Bolya, Zhou, Xiao & Lee, YOLACT: Real-time Instance Segmentation, ICCV 2019, "
                          "arXiv:1904.02689")
def yolact(num_classes: int, in_channels: int = 3, *, class_names: list[str] | None = None,
           **kwargs: Any) -> YOLACT:
    """YOLACT (:class:`YOLACT`'s keywords; the defaults are the paper's ResNet-101-FPN at 550 x 550)."""
    check_rgb(in_channels, "yolact")
    if "anchor_sizes" in kwargs:
        kwargs["anchor_sizes"] = tuple(kwargs["anchor_sizes"])
    model = YOLACT(num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    return model

