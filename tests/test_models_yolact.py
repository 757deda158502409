"""YOLACT: structure (k = 32 prototypes, 3 anchors, P3-P7), Fast NMS against standard NMS and the paper's
worked case, cropping, training steps, the detection output format, save/load and bad arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    assert_reloads_with_identical_detections,
    empty_detection_target,
    trains_then_detects,
)
from torch import nn
from torchvision.ops import nms

import pixelseg
from pixelseg.data.instances import SyntheticInstances, collate_detection
from pixelseg.errors import PixelsegError
from pixelseg.models.yolact import YOLACT, crop, fast_nms

TINY = dict(backbone="resnet18", fpn_channels=32, num_prototypes=8, fixed_size=64, min_size=64, max_size=64,
            anchor_sizes=[8, 16, 32, 64, 128], detections_per_image=20)


def test_default_yolact_is_the_papers_resnet101_fpn_with_32_prototypes_and_3_anchors():
    with torch.device("meta"):
        model = pixelseg.create_model("yolact", num_classes=81)
    assert isinstance(model, YOLACT)
    assert model.transform.fixed_size == (550, 550)
    assert len(model.backbone.body.layer3) == 23  # ResNet-101: 3, 4, 23, 3 bottlenecks
    last = [m for m in model.protonet.modules() if isinstance(m, nn.Conv2d)][-1]
    assert (last.kernel_size, last.out_channels) == ((1, 1), 32)
    assert isinstance(list(model.protonet.tail)[-1], nn.ReLU)  # prototypes are non-negative
    convs = [m for m in model.protonet.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 4 + [(1, 1)]
    assert model.head.classes.out_channels == 3 * 81
    assert model.head.boxes.out_channels == 3 * 4
    assert model.head.coefficients.out_channels == 3 * 32
    assert model.semantic.out_channels == 80


def test_pyramid_has_five_levels_and_prototypes_at_stride_4():
    model = YOLACT(4, **TINY).eval()
    features = list(model.backbone(torch.zeros(1, 3, 128, 128)).values())
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    prototypes, classes, boxes, coefficients, anchors = model._outputs(features)
    positions = sum(f.shape[-1] * f.shape[-2] for f in features)
    assert prototypes.shape == (1, 32, 32, 8) and prototypes.min() >= 0
    assert classes.shape == (1, 3 * positions, 4) and boxes.shape == (1, 3 * positions, 4)
    assert coefficients.shape == (1, 3 * positions, 8) and coefficients.abs().max() <= 1
    assert anchors.shape == (3 * positions, 4)
    widths, heights = anchors[:3, 2] - anchors[:3, 0], anchors[:3, 3] - anchors[:3, 1]
    torch.testing.assert_close(widths / heights, torch.tensor([1.0, 0.5, 2.0]))
    torch.testing.assert_close((widths * heights).sqrt(), torch.full((3,), 8.0))


def test_fast_nms_equals_standard_nms_without_chains_and_never_keeps_more():
    gen = torch.Generator().manual_seed(0)
    # clusters of three heavily overlapping boxes, 100 px apart: no suppression chains across clusters
    centres = torch.arange(8.0).repeat_interleave(3) * 100
    jitter = torch.rand(24, 4, generator=gen) * 4
    boxes = torch.stack([centres, centres * 0, centres + 40, centres * 0 + 40], 1) + jitter
    scores = torch.rand(24, generator=gen)
    assert sorted(fast_nms(boxes, scores[None], 0.5)[1].tolist()) == sorted(nms(boxes, scores, 0.5).tolist())
    corners = torch.rand(60, 2, generator=gen) * 200
    boxes = torch.cat([corners, corners + 10 + torch.rand(60, 2, generator=gen) * 40], 1)
    scores = torch.rand(60, generator=gen)
    kept_fast = set(fast_nms(boxes, scores[None], 0.5, top_k=60)[1].tolist())
    assert kept_fast <= set(nms(boxes, scores, 0.5).tolist())  # Fast NMS may remove more, never less


def test_fast_nms_lets_an_already_suppressed_box_suppress_like_the_paper():
    # A overlaps B (IoU 0.6), B overlaps C (IoU 0.6), A and C barely touch: standard NMS keeps A and C,
    # Fast NMS (max over the upper-triangular IoU column) keeps only A.
    boxes = torch.tensor([[0.0, 0, 10, 10], [2.5, 0, 12.5, 10], [5.0, 0, 15, 10]])
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    assert sorted(nms(boxes, scores[0], 0.5).tolist()) == [0, 2]
    classes, kept = fast_nms(boxes, scores, 0.5)
    assert kept.tolist() == [0] and classes.tolist() == [0]
    # per class: the same boxes under two classes are suppressed only within their class
    two = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.8, 0.0]])
    classes, kept = fast_nms(boxes, two, 0.5)
    assert sorted(zip(classes.tolist(), kept.tolist(), strict=True)) == [(0, 0), (1, 1)]


def test_crop_zeroes_masks_outside_their_box():
    masks = torch.ones(2, 6, 8)
    cropped = crop(masks, torch.tensor([[1.0, 2, 4, 5], [0, 0, 8, 6]]))
    expected = torch.zeros(6, 8)
    expected[2:5, 1:4] = 1
    torch.testing.assert_close(cropped[0], expected)
    torch.testing.assert_close(cropped[1], masks[1])


def test_yolact_losses_decrease_over_a_few_steps_and_eval_returns_torchvision_detections():
    torch.manual_seed(0)
    model = pixelseg.create_model("yolact", num_classes=4, **TINY)
    outputs = trains_then_detects(model, {"loss_classifier", "loss_box_reg", "loss_mask", "loss_semantic"})
    for output, (height, width) in zip(outputs, [(64, 64), (48, 80)], strict=True):
        assert len(output["boxes"]) > 0
        assert (output["boxes"][:, 2] <= width + 1e-4).all() and (output["boxes"][:, 3] <= height + 1e-4).all()


def test_yolact_without_semantic_loss_and_without_targets():
    model = YOLACT(3, semantic_weight=0.0, **TINY)
    assert model.semantic is None
    images, targets = collate_detection([SyntheticInstances(1, size=64)[0]])
    assert "loss_semantic" not in model.train()(images, targets)
    with pytest.raises(PixelsegError, match="needs targets"):
        model(images)


def test_saved_yolact_reloads_with_identical_detections(tmp_path: Path):
    torch.manual_seed(1)
    model = pixelseg.create_model("yolact", num_classes=4, class_names=["background", "a", "b", "c"], **TINY)
    assert_reloads_with_identical_detections(model, tmp_path / "model", ["background", "a", "b", "c"])


def test_bad_yolact_arguments():
    with pytest.raises(PixelsegError, match="at least 2"):
        YOLACT(1, **TINY)
    with pytest.raises(PixelsegError, match="one size per level"):
        YOLACT(3, **{**TINY, "anchor_sizes": [8, 16]})
    with pytest.raises(PixelsegError, match="unknown backbone 'vgg'"):
        YOLACT(3, **{**TINY, "backbone": "vgg"})
    with pytest.raises(PixelsegError, match="in_channels=3"):
        pixelseg.create_model("yolact", num_classes=3, in_channels=1, **TINY)


def test_an_image_without_objects_gives_finite_losses_and_gradients():
    model = YOLACT(3, **TINY).train()
    losses = model([torch.rand(3, 64, 64)], [empty_detection_target()])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] == 0
