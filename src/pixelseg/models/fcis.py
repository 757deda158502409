"""FCIS: Fully Convolutional Instance-aware Semantic Segmentation (Li, Qi, Dai, Ji & Wei, CVPR 2017,
arXiv:1611.07709).

The one idea: make the mask *and* the class of every RoI come out of one bank of fully convolutional score
maps. For each of the ``C + 1`` categories a 1x1 convolution predicts ``k x k`` position-sensitive *inside*
maps and ``k x k`` *outside* maps (``2 (C + 1) k^2`` channels; ``k = 7``), each map scoring a pixel's
membership of an object seen from one relative position (top-left, ..., bottom-right). A RoI *assembles*
its own pair of maps by copying, in each of its ``k x k`` cells, the cell's map. Then, per pixel:

- a softmax over (inside, outside) gives the class's foreground mask (detection and segmentation share it);
- ``max(inside, outside)`` averaged over the RoI gives the class's detection score, softmax over ``C + 1``
  (the paper's Sec. 3.2): a pixel inside the box but outside the object still votes for the class.

What is built (the defaults are the paper's COCO configuration):

- Backbone: ResNet-101 with conv5's stride replaced by dilation 2 on all its 3x3 convolutions (stride 16);
  ``backbone`` also takes ``"resnet50"``, ``"resnet18"`` and ``"mobilenet_v3_large"`` (its last stage
  dilated the same way, torchvision's ``dilated=True``). BatchNorm learns when trained from scratch and is
  frozen with ``backbone_weights``, as in the other detectors here.
- RPN on conv4 (torchvision's ``RegionProposalNetwork``): a 3x3 conv of 512 channels, 12 anchors per
  position (areas 64^2-512^2, ratios 0.5, 1, 2: the paper's COCO anchors, 3 scales plus a finer one), 6000
  boxes before and 300 after NMS at 0.7.
- Head on conv5: a 1x1 conv to 1024 channels + ReLU, then sibling 1x1 convs to the ``2 (C + 1) k^2``
  inside/outside maps and to ``4 k^2`` position-sensitive box-regression maps (class-agnostic).
- Position-sensitive assembling, written here (:func:`position_sensitive_assemble`), vectorised: every RoI
  is read as ``21 x 21`` bins (the authors' mask size), ``3 x 3`` bins per cell, each bin the average of
  bilinear samples of its cell's map; with one bin per cell it is torchvision's ``ps_roi_align``.
- Training: RoIs are the proposals plus the ground-truth boxes, positive at box IoU >= 0.5 with their
  best-matching object (the paper: > 0.5). Three losses in equal weights (the paper's): softmax classification over
  ``C + 1``; the per-pixel softmax (inside vs outside) mask loss on the ground-truth class's maps only, for
  positive RoIs, against the ground-truth mask cropped by RoIAlign to ``21 x 21``; smooth-L1 box regression
  on positive RoIs (targets divided by 0.2 / 0.5 like the authors' ``BBOX_STDS``). Online hard example
  mining: the 128 RoIs of each image with the highest summed loss are kept; the class and box terms are
  divided by their number, the mask term (a per-pixel mean) by the number of positives among them.
- Inference (the paper's Sec. 3.4): the 300 proposals are scored, their boxes regressed, and the 300
  refined boxes scored again; of these 600, per class, those above ``box_score_thresh`` go through NMS at
  IoU 0.3 and the best 100 are kept. Mask voting (``mask_voting=True``): a kept detection of class ``c``
  averages, per pixel, the class-``c`` foreground masks of all 600 RoIs whose box overlaps its box at IoU
  >= 0.5, weighted by their class-``c`` scores; the average is resampled in the frame of the union of those
  boxes and pasted into the image. Masks are returned as probabilities (the instance task thresholds them).

What differs from the paper and the authors' code (msracver/FCIS):

- the authors assemble by integer-bin average pooling (R-FCN's PSROIPooling), here by bilinear sampling
  as in RoIAlign;
- the RPN objectness is one sigmoid logit per anchor (torchvision), not a two-way softmax;
- box regression has 4 class-agnostic outputs as in the paper (the authors' code has 8: background and
  foreground);
- the three loss terms weigh the same (the paper; ``mask_weight`` changes it) and the mask term is a mean
  over pixels and positive RoIs as in Mask R-CNN (the authors' code weights it 10x, summed over pixels);
- the NMS is per class as in the authors' code (the paper words it as one NMS, then the best class);
- mask voting averages probabilities (the authors binarise each mask at 0.4 first) and keeps the RoI's box
  (the authors refit a box to the voted mask).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50, resnet101
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import FrozenBatchNorm2d, batched_nms, box_iou, clip_boxes_to_image

from ..errors import PixelsegError, closest
from .base import SavesPretrained
from .modules.detection import check_num_classes, check_rgb, class_names_or_default
from .modules.roi_ops import boxes_to_rois, roi_align
from .registry import register

BACKBONES = ("resnet101", "resnet50", "resnet18", "mobilenet_v3_large")
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
FEATURE_STRIDE = 16  # conv4 and the dilated conv5
# Upper bound on gathered values held at once by the assembling; RoIs are processed in chunks below it.
_GATHER_BUDGET = 2**24

Target = dict[str, Tensor]


# ---- position-sensitive assembling -----------------------------------------------------------------

def _bilinear_taps(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The two integer neighbours ``(..., 2)`` of sample coordinates along one axis and their weights, with
    the border rules of the RoIAlign kernels: a sample more than one pixel outside the map reads zero, one
    within that margin is clamped onto the border row or column."""
    outside = (coords < -1.0) | (coords > size)
    coords = coords.clamp(min=0.0)
    floor = coords.floor()
    low = floor.long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    frac = torch.where(floor >= size - 1, torch.zeros_like(coords), coords - floor)
    keep = (~outside).to(coords.dtype)
    return torch.stack([low, high], dim=-1), torch.stack([(1.0 - frac) * keep, frac * keep], dim=-1)


def _sample_positions(start: Tensor, extent: Tensor, bins: int, grid: int) -> Tensor:
    """``(K, bins, grid)`` sample coordinates: bin ``p``, point ``i`` at ``start + (p + (i + 0.5) / grid) * bin``."""
    bin_size = (extent / bins).view(-1, 1, 1)
    bin_index = torch.arange(bins, device=start.device, dtype=start.dtype).view(1, -1, 1)
    point = (torch.arange(grid, device=start.device, dtype=start.dtype).view(1, 1, -1) + 0.5) / grid
    return start.view(-1, 1, 1) + (bin_index + point) * bin_size


def position_sensitive_assemble(score_maps: Tensor, rois: Tensor, group_size: int, output_size: int,
                                spatial_scale: float = 1.0, sampling_ratio: int = -1) -> Tensor:
    """Assemble per-RoI maps ``(K, D, m, m)`` from ``D`` banks of ``k x k`` position-sensitive score maps.

    ``score_maps`` is ``(B, D * k * k, H, W)``: channel ``d * k * k + i * k + j`` is bank ``d``'s map for the
    cell in row ``i``, column ``j`` of a ``k x k`` grid laid over a RoI. ``rois`` is ``(K, 5)``, rows
    ``(batch_index, x1, y1, x2, y2)`` in input coordinates, multiplied by ``spatial_scale`` onto the maps
    (a pixel centre at ``index + 0.5``, no rounding). Each RoI is cut into ``m x m`` bins; bin ``(p, q)`` lies
    in cell ``(p * k // m, q * k // m)`` and is the average of ``g x g`` bilinear samples of that cell's map
    (``g = sampling_ratio``, or ``ceil(bin size)`` when it is ``<= 0``). With ``m = k`` this is
    ``torchvision.ops.ps_roi_align``. The gather is vectorised over RoIs, bins and samples; RoIs with the
    same sample grid are processed together, in chunks that bound the memory.
    """
    batch, channels, height, width = score_maps.shape
    k, m = group_size, output_size
    if channels % (k * k):
        raise ValueError(f"{channels} score-map channels are not a multiple of group_size^2 = {k * k}")
    depth = channels // (k * k)
    rois = rois.to(score_maps.dtype)
    if len(rois) == 0:
        return score_maps.new_zeros(0, depth, m, m)
    x1 = rois[:, 1] * spatial_scale - 0.5
    y1 = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale - 0.5 - x1
    roi_h = rois[:, 4] * spatial_scale - 0.5 - y1
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / m).long().clamp(min=1)
        grid_w = torch.ceil(roi_w / m).long().clamp(min=1)
    # one row per (image, cell row, cell column, y, x), the D banks as columns
    flat = score_maps.view(batch, depth, k, k, height, width).permute(0, 2, 3, 4, 5, 1).reshape(-1, depth)
    cell = torch.arange(m, device=score_maps.device) * k // m  # the cell of each bin along one axis
    cell_offset = (cell.view(-1, 1) * k + cell.view(1, -1)) * (height * width)  # (m, m)

    pieces, order = [], []
    for gh, gw in torch.stack([grid_h, grid_w], 1).unique(dim=0).tolist():
        chosen = torch.nonzero((grid_h == gh) & (grid_w == gw)).squeeze(1)
        per_roi = m * m * gh * gw * 4 * depth
        for part in chosen.split(max(1, _GATHER_BUDGET // per_roi)):
            rows, weight_y = _bilinear_taps(_sample_positions(y1[part], roi_h[part], m, gh), height)
            cols, weight_x = _bilinear_taps(_sample_positions(x1[part], roi_w[part], m, gw), width)
            # index and weight of every (RoI, p, sample y, tap y, q, sample x, tap x)
            base = rois[part, 0].long() * (k * k * height * width)
            index = (base.view(-1, 1, 1, 1, 1, 1, 1)
                     + cell_offset.view(1, m, 1, 1, m, 1, 1)
                     + rows.view(-1, m, gh, 2, 1, 1, 1) * width
                     + cols.view(-1, 1, 1, 1, m, gw, 2))
            weight = weight_y.view(-1, m, gh, 2, 1, 1, 1) * weight_x.view(-1, 1, 1, 1, m, gw, 2) / (gh * gw)
            # index_select's backward is an index_add, much faster on CPU than advanced indexing's
            gathered = flat.index_select(0, index.reshape(-1)).view(*index.shape, depth)
            pieces.append(torch.einsum("rpaiqbj,rpaiqbjd->rdpq", weight, gathered))
            order.append(part)
    assembled = torch.cat(pieces)
    return assembled.index_select(0, torch.argsort(torch.cat(order)))


# ---- masks in and out of boxes ---------------------------------------------------------------------

def _interpolation_weights(coords: Tensor, size: int) -> Tensor:
    """``(..., size)`` bilinear weights of samples at continuous indices ``coords`` into ``size`` cells, zero
    outside (the triangle kernel ``max(0, 1 - |t - i|)``, so rows sum to at most 1)."""
    cells = torch.arange(size, device=coords.device, dtype=coords.dtype)
    return (1.0 - (coords.unsqueeze(-1) - cells).abs()).clamp(min=0.0)


def _axis_weights(frames: Tensor, boxes: Tensor, samples: int, size: int, start: int) -> Tensor:
    """``(N, samples, size)`` weights reading a ``size``-cell mask laid over ``boxes`` (columns ``start``,
    ``start + 2`` of ``(N, 4)`` boxes) at the centres of ``samples`` equal cells of ``frames``."""
    low, extent = frames[:, start:start + 1], (frames[:, start + 2:start + 3] - frames[:, start:start + 1])
    centres = low + (torch.arange(samples, device=frames.device, dtype=frames.dtype) + 0.5) * extent / samples
    box_low = boxes[:, start:start + 1]
    box_extent = (boxes[:, start + 2:start + 3] - box_low).clamp(min=1e-3)
    return _interpolation_weights((centres - box_low) / box_extent * size - 0.5, size)


def resample_masks(masks: Tensor, boxes: Tensor, frames: Tensor, out_h: int, out_w: int) -> Tensor:
    """Masks ``(N, s, s)`` laid over ``boxes`` ``(N, 4)``, read bilinearly at the centres of an ``out_h x
    out_w`` grid over ``frames`` ``(N, 4)``; zero outside their box. Separable: ``W_y @ mask @ W_x^T``."""
    size_h, size_w = masks.shape[-2:]
    weight_y = _axis_weights(frames, boxes, out_h, size_h, 1)
    weight_x = _axis_weights(frames, boxes, out_w, size_w, 0)
    return weight_y @ masks @ weight_x.transpose(1, 2)


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """``(N, height, width)`` image-size masks: each ``(s, s)`` mask stretched over its box, zero outside."""
    image = boxes.new_tensor([0.0, 0.0, width, height]).expand_as(boxes)
    return resample_masks(masks, boxes, image, height, width)


def vote_masks(boxes: Tensor, scores: Tensor, masks: Tensor, kept: Tensor, labels: Tensor,
               iou_threshold: float = 0.5, resolution: int = 42) -> tuple[Tensor, Tensor]:
    """Mask voting (Dai, He & Sun, MNC, arXiv:1512.04412; FCIS Sec. 3.4).

    ``boxes`` ``(R, 4)``, ``scores`` ``(R, C + 1)`` and foreground probabilities ``masks`` ``(R, C + 1, s, s)``
    of all RoIs; ``kept`` ``(N,)`` the RoIs kept by NMS and ``labels`` ``(N,)`` their classes. Detection ``n``
    averages the class-``labels[n]`` masks of every RoI whose box overlaps its box at IoU >= ``iou_threshold``
    (itself included), weighted by their class-``labels[n]`` scores. Returns the frames ``(N, 4)`` (the union
    of the voting boxes) and the voted masks ``(N, resolution, resolution)`` over them.
    """
    detection, voter = torch.nonzero(box_iou(boxes[kept], boxes) >= iou_threshold, as_tuple=True)
    classes = labels[detection]
    weights = scores[voter, classes]
    frames = boxes[kept].clone()
    for column, reduce in ((0, "amin"), (1, "amin"), (2, "amax"), (3, "amax")):
        frames[:, column] = frames[:, column].scatter_reduce(0, detection, boxes[voter, column], reduce)
    resampled = resample_masks(masks[voter, classes], boxes[voter], frames[detection], resolution, resolution)
    total = scores.new_zeros(len(kept)).index_add(0, detection, weights).clamp(min=1e-12)
    voted = masks.new_zeros(len(kept), resolution, resolution).index_add(0, detection,
                                                                          resampled * weights.view(-1, 1, 1))
    return frames, voted / total.view(-1, 1, 1)


# ---- backbone and heads ----------------------------------------------------------------------------

class DilatedBackbone(nn.Module):
    """conv1-conv4 (stride 16, read by the RPN) and conv5 with its stride traded for dilation (stride 16,
    read by the score maps); returns ``{"conv4": ..., "conv5": ...}``."""

    def __init__(self, conv4: nn.Module, conv5: nn.Module, conv4_channels: int, conv5_channels: int) -> None:
        super().__init__()
        self.conv4, self.conv5 = conv4, conv5
        self.conv4_channels, self.conv5_channels = conv4_channels, conv5_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        conv4 = self.conv4(images)
        return OrderedDict(conv4=conv4, conv5=self.conv5(conv4))


def _load_weights(module: nn.Module, path: str) -> None:
    """Backbone weights from a safetensors file (torchvision's parameter names)."""
    from ..io.checkpoint import load_state_dict

    missing, _ = module.load_state_dict(load_state_dict(path), strict=False)
    if len(missing) == len(module.state_dict()):
        raise PixelsegError("no backbone weight matched the backbone's parameter names", path)


def _dilate(stage: nn.Module) -> None:
    """The paper's "hole algorithm" on conv5: no stride, every 3x3 convolution dilated by 2."""
    for conv in stage.modules():
        if isinstance(conv, nn.Conv2d):
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (2, 2), (2, 2)


def _last_conv_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def dilated_backbone(name: str, weights: str | None = None) -> DilatedBackbone:
    """``name`` (one of ``BACKBONES``) cut into conv1-conv4 and a dilated conv5, both at stride 16."""
    if name not in BACKBONES:
        raise PixelsegError(f"unknown FCIS backbone '{name}' (choose from {', '.join(BACKBONES)})")
    if name == "mobilenet_v3_large":
        body = mobilenet_v3_large(weights=None, dilated=True).features  # blocks 13-16 dilated, stride 16
        if weights:
            _load_weights(body, weights)
        return DilatedBackbone(body[:13], body[13:], _last_conv_channels(body[12]), _last_conv_channels(body[16]))
    build = {"resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101}[name]
    body = build(weights=None, norm_layer=FrozenBatchNorm2d if weights else nn.BatchNorm2d)
    if weights:
        _load_weights(body, weights)
    _dilate(body.layer4)
    conv4 = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool, body.layer1, body.layer2, body.layer3)
    width = 1 if name == "resnet18" else 4
    return DilatedBackbone(conv4, body.layer4, 256 * width, 512 * width)


class ProposalHead(nn.Module):
    """The RPN head on conv4 (torchvision ``RPNHead``'s interface): a 3x3 conv to ``channels`` + ReLU, then
    one objectness logit and four box deltas per anchor (1x1 convs)."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        hidden = [F.relu(self.conv(feature)) for feature in features]
        return [self.cls_logits(h) for h in hidden], [self.bbox_pred(h) for h in hidden]


class InsideOutsideHead(nn.Module):
    """conv5 → 1x1 conv to ``channels`` + ReLU → the ``2 (C + 1) k^2`` inside/outside score maps and the
    ``4 k^2`` box-regression maps (sibling 1x1 convs). Bank ``2 c`` holds class ``c``'s outside maps and
    bank ``2 c + 1`` its inside maps, ``k^2`` relative positions each."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, group_size: int) -> None:
        super().__init__()
        cells = group_size * group_size
        self.reduce = nn.Conv2d(in_channels, channels, 1)
        self.score_maps = nn.Conv2d(channels, 2 * num_classes * cells, 1)
        self.box_maps = nn.Conv2d(channels, 4 * cells, 1)
        for layer in (self.reduce, self.score_maps, self.box_maps):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, conv5: Tensor) -> tuple[Tensor, Tensor]:
        hidden = F.relu(self.reduce(conv5))
        return self.score_maps(hidden), self.box_maps(hidden)


# ---- the model -------------------------------------------------------------------------------------

class FCIS(SavesPretrained, nn.Module):
    """FCIS (Li et al., 2017): RPN + position-sensitive inside/outside score maps; see the module docstring.

    Takes a list of ``(3, H, W)`` images in ``[0, 1]``; in training also torchvision detection targets and
    returns a dict of losses; in eval returns per image ``boxes``, ``labels``, ``scores`` and ``masks``
    ``(N, 1, H, W)`` (foreground probabilities) at the image's own size.
    """

    class_names: list[str]

    def __init__(self, num_classes: int, *, backbone: str = "resnet101", backbone_weights: str | None = None,
                 group_size: int = 7, mask_size: int = 21, head_channels: int = 1024, rpn_channels: int = 512,
                 anchor_sizes: tuple[int, ...] = (64, 128, 256, 512), sampling_ratio: int = -1,
                 fixed_size: int | None = None, min_size: int = 600, max_size: int = 1000,
                 rpn_pre_nms_top_n_train: int = 6000, rpn_post_nms_top_n_train: int = 300,
                 rpn_pre_nms_top_n_test: int = 6000, rpn_post_nms_top_n_test: int = 300,
                 rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 box_fg_iou_thresh: float = 0.5, ohem_rois_per_image: int = 128, mask_weight: float = 1.0,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.3, box_detections_per_img: int = 100,
                 mask_voting: bool = True, vote_iou_thresh: float = 0.5) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if group_size < 1 or mask_size < group_size:
            raise PixelsegError(f"need 1 <= group_size <= mask_size (every cell at least one mask bin), "
                                f"got group_size={group_size}, mask_size={mask_size}")
        if not anchor_sizes:
            raise PixelsegError("anchor_sizes needs at least one size")
        if ohem_rois_per_image < 1:
            raise PixelsegError(f"ohem_rois_per_image must be at least 1, got {ohem_rois_per_image}")
        self.num_classes, self.group_size, self.mask_size = num_classes, group_size, mask_size
        self.sampling_ratio = sampling_ratio
        self.transform = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                                  fixed_size=(fixed_size, fixed_size) if fixed_size else None)
        self.backbone = dilated_backbone(backbone, backbone_weights)
        anchors = AnchorGenerator((tuple(anchor_sizes),), (ANCHOR_RATIOS,))
        self.rpn = RegionProposalNetwork(
            anchors, ProposalHead(self.backbone.conv4_channels, rpn_channels, anchors.num_anchors_per_location()[0]),
            rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test}, rpn_nms_thresh)
        self.head = InsideOutsideHead(self.backbone.conv5_channels, head_channels, num_classes, group_size)
        self.box_coder = BoxCoder((5.0, 5.0, 2.0, 2.0))  # the authors' BBOX_STDS 0.2 (centre), 0.5 (size)
        self.box_fg_iou_thresh, self.ohem_rois_per_image, self.mask_weight = \
            box_fg_iou_thresh, ohem_rois_per_image, mask_weight
        self.box_score_thresh, self.box_nms_thresh = box_score_thresh, box_nms_thresh
        self.box_detections_per_img = box_detections_per_img
        self.mask_voting, self.vote_iou_thresh = mask_voting, vote_iou_thresh

    def forward(self, images: list[Tensor], targets: list[Target] | None = None):
        if self.training and targets is None:
            raise PixelsegError("in training mode the model needs targets")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, {"conv4": features["conv4"]}, targets)
        score_maps, box_maps = self.head(features["conv5"])
        if self.training:
            return {**rpn_losses, **self.compute_losses(score_maps, box_maps, proposals, targets)}
        return self.detect(score_maps, box_maps, proposals, image_list.image_sizes, original_sizes)

    def roi_outputs(self, score_maps: Tensor, box_maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For ``rois`` ``(R, 5)``: class logits ``(R, C + 1)``, the assembled (outside, inside) logits
        ``(R, C + 1, 2, m, m)`` and class-agnostic box deltas ``(R, 4)``."""
        scale, k, m = 1.0 / FEATURE_STRIDE, self.group_size, self.mask_size
        pairs = position_sensitive_assemble(score_maps, rois, k, m, scale, self.sampling_ratio)
        pairs = pairs.view(len(rois), self.num_classes, 2, m, m)
        class_logits = pairs.amax(dim=2).mean(dim=(-2, -1))  # max(inside, outside), averaged over the RoI
        box_deltas = position_sensitive_assemble(box_maps, rois, k, k, scale, self.sampling_ratio).mean(dim=(-2, -1))
        return class_logits, pairs, box_deltas

    # ---- training

    def _match(self, boxes: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        """Per RoI: its class (0 for background) and the index of its best-overlapping ground-truth box."""
        if len(target["boxes"]) == 0:
            zeros = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            return zeros, zeros
        best, matched = box_iou(boxes, target["boxes"]).max(dim=1)
        labels = target["labels"][matched] * (best >= self.box_fg_iou_thresh)
        return labels, matched

    def compute_losses(self, score_maps: Tensor, box_maps: Tensor, proposals: list[Tensor],
                       targets: list[Target]) -> dict[str, Tensor]:
        boxes = [torch.cat([p.detach(), t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets, strict=True)]
        matches = [self._match(b, t) for b, t in zip(boxes, targets, strict=True)]
        labels = torch.cat([label for label, _ in matches])
        rois = boxes_to_rois(boxes)
        class_logits, pairs, box_deltas = self.roi_outputs(score_maps, box_maps, rois)
        class_loss = F.cross_entropy(class_logits, labels, reduction="none")
        mask_loss, box_loss = torch.zeros_like(class_loss), torch.zeros_like(class_loss)
        positive = torch.nonzero(labels > 0).squeeze(1)
        if len(positive):
            mask_targets, gt_boxes = [], []
            for index, (target, (image_labels, matched)) in enumerate(zip(targets, matches, strict=True)):
                chosen = torch.nonzero(image_labels > 0).squeeze(1)
                image_rois = torch.cat([matched[chosen, None].to(rois.dtype), boxes[index][chosen]], dim=1)
                crops = roi_align(target["masks"][:, None].to(rois.dtype), image_rois, self.mask_size,
                                  sampling_ratio=0, aligned=True)
                mask_targets.append(crops[:, 0] >= 0.5)
                gt_boxes.append(target["boxes"][matched[chosen]])
            # softmax over (outside, inside) of the ground-truth class, per pixel; index 1 = inside = object
            picked = pairs[positive, labels[positive]]  # (P, 2, m, m)
            pixel_loss = F.cross_entropy(picked, torch.cat(mask_targets).long(), reduction="none")
            mask_loss = mask_loss.index_put((positive,), pixel_loss.mean(dim=(1, 2)))
            encoded = self.box_coder.encode_single(torch.cat(gt_boxes).to(rois.dtype), rois[positive, 1:])
            regression = F.smooth_l1_loss(box_deltas[positive], encoded, beta=1.0, reduction="none").sum(dim=1)
            box_loss = box_loss.index_put((positive,), regression)
        # OHEM: per image, the RoIs with the highest summed loss
        total = (class_loss + mask_loss + box_loss).detach()
        selected, start = [], 0
        for image_boxes in boxes:
            count = len(image_boxes)
            hardest = total[start:start + count].topk(min(self.ohem_rois_per_image, count)).indices
            selected.append(hardest + start)
            start += count
        chosen = torch.cat(selected)
        count, positives = max(len(chosen), 1), max(int((labels[chosen] > 0).sum()), 1)
        return {"loss_classifier": class_loss[chosen].sum() / count,
                "loss_mask": self.mask_weight * mask_loss[chosen].sum() / positives,
                "loss_box_reg": box_loss[chosen].sum() / count}

    # ---- inference

    @torch.no_grad()
    def detect(self, score_maps: Tensor, box_maps: Tensor, proposals: list[Tensor],
               image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        results = []
        for index, (boxes, size, original) in enumerate(zip(proposals, image_sizes, original_sizes, strict=True)):
            maps, box_maps_i = score_maps[index:index + 1], box_maps[index:index + 1]
            first = self.roi_outputs(maps, box_maps_i, boxes_to_rois([boxes]))
            refined = clip_boxes_to_image(self.box_coder.decode_single(first[2], boxes), size)
            second = self.roi_outputs(maps, box_maps_i, boxes_to_rois([refined]))
            all_boxes = torch.cat([boxes, refined])
            scores = F.softmax(torch.cat([first[0], second[0]]), dim=-1)  # (R, C + 1)
            masks = F.softmax(torch.cat([first[1], second[1]]), dim=2)[:, :, 1]  # (R, C + 1, m, m) inside
            results.append(self._postprocess(all_boxes, scores, masks, size, original))
        return results

    def _postprocess(self, boxes: Tensor, scores: Tensor, masks: Tensor, size: tuple[int, int],
                     original: tuple[int, int]) -> dict[str, Tensor]:
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # a refined box may collapse
        roi, column = torch.nonzero((scores[:, 1:] > self.box_score_thresh) & valid[:, None], as_tuple=True)
        candidate_scores = scores[roi, column + 1]
        keep = batched_nms(boxes[roi], candidate_scores, column, self.box_nms_thresh)[: self.box_detections_per_img]
        kept, labels, kept_scores = roi[keep], column[keep] + 1, candidate_scores[keep]
        if self.mask_voting:
            frames, kept_masks = vote_masks(boxes, scores, masks, kept, labels, self.vote_iou_thresh,
                                            2 * self.mask_size)
        else:
            frames, kept_masks = boxes[kept], masks[kept, labels]
        height, width = original
        pasted = paste_masks(kept_masks, resize_boxes(frames, list(size), list(original)), height, width)
        return {"boxes": resize_boxes(boxes[kept], list(size), list(original)), "labels": labels,
                "scores": kept_scores, "masks": pasted[:, None]}


def _check_keywords(kwargs: dict[str, Any]) -> None:
    known = set(inspect.signature(FCIS.__init__).parameters) - {"self", "num_classes"}
    for key in sorted(set(kwargs) - known):
        raise PixelsegError(f"unknown FCIS keyword '{key}'{closest(key, sorted(known))}")


@register("fcis", paper="Li, Qi, Dai, Ji & Wei, Fully Convolutional Instance-aware Semantic Segmentation, "
                        "CVPR 2017, arXiv:1611.07709")
def fcis(num_classes: int, in_channels: int = 3, *, class_names: list[str] | None = None, **kwargs: Any) -> FCIS:
    """FCIS (:class:`FCIS`'s keywords; the defaults are the paper's ResNet-101 COCO configuration)."""
    check_rgb(in_channels, "fcis")
    _check_keywords(kwargs)
    if "anchor_sizes" in kwargs:
        kwargs["anchor_sizes"] = tuple(kwargs["anchor_sizes"])
    model = FCIS(num_classes, **kwargs)
    model.class_names = class_names_or_default(class_names, num_classes)
    return model
