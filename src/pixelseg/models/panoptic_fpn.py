"""Panoptic FPN (Kirillov, Girshick, He & Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019,
arXiv:1901.02446).

The one idea: one FPN backbone feeds two heads — Mask R-CNN for the countable things and a light
semantic-segmentation branch for the amorphous stuff — trained jointly, and their outputs are fused
into one non-overlapping panoptic segmentation.

- **Semantic branch** (section 3.2, figure 3): every FPN level P2-P5 goes through 3x3 conv + GroupNorm +
  ReLU + 2x bilinear upsampling stages until it reaches 1/4 scale (P2: one conv, no upsampling; P5: three
  stages), the four maps are summed, a 1x1 conv gives the classes, and 4x bilinear upsampling the input
  resolution. 128 channels in the paper. It predicts the stuff classes plus one "other" class for every
  thing pixel (label 0); void is ignored.
- **Loss**: ``L = L_rpn + L_box + L_cls + L_mask + λ_s · L_semantic`` (section 3.3); λ_s = 0.5 is the
  paper's (and detectron2's) COCO value.
- **Fusion** (section 3.3, "Inference"; detectron2's ``combine_semantic_and_instance_outputs``): instances
  scoring at least ``instance_score_threshold`` in descending score order; each pixel goes to the first
  (higher-scoring) instance that claims it, and an instance whose mask keeps at most
  ``1 − overlap_threshold`` of itself after the earlier ones is dropped; then every stuff class of the
  semantic prediction takes the pixels still free, dropped when smaller than the area threshold; thing pixels
  come only from instances (the "other" class never becomes a segment). The paper's threshold is 4096 pixels
  on COCO images (about 640×480 = 307,200 pixels); here it is the same fraction of the image,
  ``stuff_area_fraction = 4096 / 307200`` (1.33 %: 218 pixels of a 128×128 image).

Built on torchvision's ``MaskRCNN`` like ``mask_rcnn.py`` (the same backbones, RoIAlign and state-dict keys,
plus ``semantic_head.*``). Training returns the loss dict with ``loss_semantic``; evaluation returns, per
image, Mask R-CNN's detections plus ``semantic`` ``(C, H, W)`` probabilities, ``panoptic`` ``(H, W)``
segment ids (0 = void) and ``segments`` ``(S, 3)`` rows ``id, label, isthing`` (``label``: the detector's
thing label 1.. when ``isthing``, else the stuff index 1.. of the semantic branch).

With ResNet-50-FPN, 80 thing and 53 stuff classes (COCO panoptic) it holds 46.0 M parameters: 44.4 M of
Mask R-CNN and 1.63 M of the semantic branch (1,623,808 in its convolutions and GroupNorms, 6,966 in the
54-class 1x1 classifier).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from ..errors import PixelsegError
from .base import SavesPretrained
from .modules.detection import (
    PYRAMID_LEVELS,
    check_detector_keywords,
    check_num_classes,
    check_rgb,
    class_names_or_default,
    feature_pyramid,
    mask_rcnn_components,
)
from .registry import register

IGNORE = 255  # void pixels of the semantic target
COCO_STUFF_AREA = 4096 / (640 * 480)  # the paper's 4096-pixel stuff threshold as a fraction of a COCO image


class SemanticFPNHead(nn.Module):
    """The semantic branch: each level → (3x3 conv + GN + ReLU [+ 2x up]) stages to 1/4 scale, summed,
    1x1 conv to ``num_classes``, 4x bilinear upsampling."""

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128,
                 strides: tuple[int, ...] = (4, 8, 16, 32), groups: int = 32) -> None:
        super().__init__()
        groups = math.gcd(groups, channels)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            stages: list[nn.Module] = []
            for index in range(max(1, int(math.log2(stride)) - 2)):
                stages += [nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1, bias=False),
                           nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]
                if stride > 4:
                    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*stages))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        summed = self.scale_heads[0](features[0])
        for head, feature in zip(self.scale_heads[1:], features[1:], strict=True):
            summed = summed + head(feature)  # (B, channels, H/4, W/4)
        return F.interpolate(self.classifier(summed), scale_factor=4, mode="bilinear", align_corners=False)


def fuse_panoptic(masks: Tensor, scores: Tensor, labels: Tensor, semantic: Tensor, *,
                  score_threshold: float = 0.5, overlap_threshold: float = 0.5, stuff_area: float = 4096,
                  mask_threshold: float = 0.5, things_label: int = 0) -> tuple[Tensor, Tensor]:
    """The panoptic segmentation of one image: ``(H, W)`` int64 segment ids (0 = void) and ``(S, 3)`` rows
    ``id, label, isthing``.

    ``masks`` ``(N, H, W)`` instance mask probabilities with their ``scores`` and thing ``labels``;
    ``semantic`` ``(H, W)`` the semantic branch's class per pixel (``things_label``: the "other" class).
    """
    ids = torch.zeros(semantic.shape, dtype=torch.int64, device=semantic.device)
    segments: list[tuple[int, int, int]] = []
    for index in torch.argsort(scores, descending=True).tolist():
        if float(scores[index]) < score_threshold:
            break
        mask = masks[index] >= mask_threshold
        area = int(mask.sum())
        if area == 0:
            continue
        free = mask & (ids == 0)
        if int(free.sum()) <= (1 - overlap_threshold) * area:  # mostly under higher-scoring instances
            continue
        segments.append((len(segments) + 1, int(labels[index]), 1))
        ids[free] = len(segments)
    for label in torch.unique(semantic).tolist():
        if label == things_label:
            continue
        region = (semantic == label) & (ids == 0)
        if int(region.sum()) < stuff_area:
            continue
        segments.append((len(segments) + 1, int(label), 0))
        ids[region] = len(segments)
    return ids, torch.tensor(segments, dtype=torch.int64).reshape(len(segments), 3)


class PanopticFPN(SavesPretrained, MaskRCNN):
    """torchvision's ``MaskRCNN`` plus ``semantic_head``; see the module for what ``forward`` returns."""

    class_names: list[str]
    stuff_names: list[str]

    def __init__(self, backbone: nn.Module, num_classes: int, *, semantic_head: SemanticFPNHead,
                 semantic_loss_weight: float = 0.5, instance_score_threshold: float = 0.5,
                 overlap_threshold: float = 0.5, stuff_area_fraction: float = COCO_STUFF_AREA,
                 **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.semantic_head = semantic_head
        self.semantic_loss_weight = semantic_loss_weight
        self.instance_score_threshold = instance_score_threshold
        self.overlap_threshold = overlap_threshold
        self.stuff_area_fraction = stuff_area_fraction

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:  # type: ignore[override]
        if self.training and targets is None:
            raise PixelsegError("Panoptic FPN needs targets in training mode")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, detection_targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, detection_targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, detection_targets)
        logits = self.semantic_head([features[level] for level in PYRAMID_LEVELS])  # (B, C, H_pad, W_pad)
        if self.training:
            assert targets is not None
            semantic = self._semantic_targets(targets, image_list.image_sizes, logits.shape[-2:])
            loss = F.cross_entropy(logits, semantic, ignore_index=IGNORE)
            return {**proposal_losses, **detector_losses, "loss_semantic": self.semantic_loss_weight * loss}
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for detection, logit, size, original in zip(detections, logits, image_list.image_sizes, original_sizes,
                                                    strict=True):
            logit = F.interpolate(logit[None, :, :size[0], :size[1]], size=original, mode="bilinear",
                                  align_corners=False)[0]
            detection["semantic"] = logit.softmax(0)
            height, width = original
            detection["panoptic"], detection["segments"] = fuse_panoptic(
                detection["masks"][:, 0], detection["scores"], detection["labels"], logit.argmax(0),
                score_threshold=self.instance_score_threshold, overlap_threshold=self.overlap_threshold,
                stuff_area=self.stuff_area_fraction * height * width)
        return detections

    @staticmethod
    def _semantic_targets(targets: list[dict[str, Tensor]], sizes: list[tuple[int, int]],
                          padded: tuple[int, int] | torch.Size) -> Tensor:
        """Each image's ``semantic`` map resized (nearest) like its image and padded with void."""
        batch = torch.full((len(targets), *padded), IGNORE, dtype=torch.int64, device=targets[0]["semantic"].device)
        for index, (target, size) in enumerate(zip(targets, sizes, strict=True)):
            if "semantic" not in target:
                raise PixelsegError("a Panoptic FPN training target needs a 'semantic' map")
            semantic = target["semantic"][None, None].float()
            resized = F.interpolate(semantic, size=tuple(size), mode="nearest")[0, 0].long()
            batch[index, :size[0], :size[1]] = resized
        return batch


@register("panoptic_fpn", paper="Kirillov, Girshick, He & Dollár, Panoptic Feature Pyramid Networks, CVPR 2019, "
                                "arXiv:1901.02446")
def panoptic_fpn(
    num_classes: int,
    in_channels: int = 3,
    *,
    num_stuff_classes: int,
    class_names: list[str] | None = None,
    stuff_names: list[str] | None = None,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    width_mult: float = 1.0,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    mask_head_channels: int = 256,
    semantic_channels: int = 128,
    semantic_loss_weight: float = 0.5,
    instance_score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_area_fraction: float = COCO_STUFF_AREA,
    roi_align_impl: str = "pixelseg",
    sampling_ratio: int = 2,
    anchor_sizes: list[int] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    **detector_kwargs: Any,
) -> PanopticFPN:
    """Panoptic FPN with ``num_classes`` detector classes (things plus background, as Mask R-CNN) and
    ``num_stuff_classes`` stuff classes (the semantic branch predicts them plus one "other" class).

    The defaults build the paper's ResNet-50-FPN model: Mask R-CNN's heads, a 128-channel semantic branch,
    λ_s = 0.5, the fusion thresholds of the paper. ``detector_kwargs`` go to torchvision's ``MaskRCNN``.
    """
    check_rgb(in_channels, "panoptic_fpn")
    check_num_classes(num_classes)
    if num_stuff_classes < 1:
        raise PixelsegError(f"num_stuff_classes must be at least 1, got {num_stuff_classes}")
    if not 0 <= overlap_threshold < 1 or not 0 <= stuff_area_fraction < 1 or semantic_loss_weight < 0:
        raise PixelsegError("overlap_threshold and stuff_area_fraction must lie in [0, 1) and "
                            "semantic_loss_weight be >= 0")
    check_detector_keywords(detector_kwargs, panoptic_fpn, "Panoptic FPN")
    features = feature_pyramid(backbone, fpn_channels, backbone_weights, width_mult)
    model = PanopticFPN(
        features, None,
        semantic_head=SemanticFPNHead(num_stuff_classes + 1, fpn_channels, semantic_channels),
        semantic_loss_weight=semantic_loss_weight, instance_score_threshold=instance_score_threshold,
        overlap_threshold=overlap_threshold, stuff_area_fraction=stuff_area_fraction,
        min_size=min_size, max_size=max_size,
        **mask_rcnn_components(num_classes, fpn_channels=fpn_channels, representation_size=representation_size,
                               mask_head_channels=mask_head_channels, anchor_sizes=anchor_sizes,
                               sampling_ratio=sampling_ratio, roi_align_impl=roi_align_impl),
        **detector_kwargs,
    )
    model.class_names = class_names_or_default(class_names, num_classes)
    model.stuff_names = list(stuff_names) if stuff_names else [f"stuff_{k}" for k in range(1, num_stuff_classes + 1)]
    if len(model.stuff_names) != num_stuff_classes:
        raise PixelsegError(f"{len(model.stuff_names)} stuff names for {num_stuff_classes} stuff classes")
    return model
