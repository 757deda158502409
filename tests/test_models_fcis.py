"""FCIS: the position-sensitive assembling against torchvision's ps_roi_align, the joint inside/outside
formulation, the paper's configuration and the reference implementation's parameter counts, training, the
detection output, mask pasting and voting, save/load and bad arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_reloads_with_identical_detections,
    empty_detection_target,
    trains_then_detects,
)
from torch import nn
from torchvision.ops import ps_roi_align

import pixelseg
from pixelseg.data.instances import SyntheticInstances, collate_detection
from pixelseg.errors import PixelsegError
from pixelseg.models.fcis import FCIS, paste_masks, position_sensitive_assemble, vote_masks

TINY = dict(backbone="resnet18", head_channels=32, rpn_channels=32, fixed_size=64, min_size=64, max_size=64,
            anchor_sizes=[16, 32, 64], rpn_post_nms_top_n_train=64, rpn_post_nms_top_n_test=32,
            ohem_rois_per_image=32, box_detections_per_img=20)
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_mask", "loss_box_reg"}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def random_rois(number: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``(number, 5)`` rois in a 270 x 210 image (partly past its border), float64."""
    corner = torch.rand(number, 2, generator=generator, dtype=torch.float64) * torch.tensor([260.0, 200.0])
    size = 1 + torch.rand(number, 2, generator=generator, dtype=torch.float64) * 150
    index = torch.randint(0, batch, (number, 1), generator=generator).double()
    return torch.cat([index, corner, corner + size], dim=1)


@pytest.mark.parametrize(("group_size", "sampling_ratio"), [(3, -1), (7, 2), (7, -1)])
def test_assembling_with_one_bin_per_cell_is_torchvision_ps_roi_align(group_size, sampling_ratio):
    generator = torch.Generator().manual_seed(group_size + sampling_ratio)
    maps = torch.randn(2, 5 * group_size**2, 13, 17, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(30, 2, generator)
    ours = position_sensitive_assemble(maps, rois, group_size, group_size, 1 / 16, sampling_ratio)
    reference = ps_roi_align(maps, rois, group_size, 1 / 16, sampling_ratio)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    upstream = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), maps)
    (reference_grad,) = torch.autograd.grad((reference * upstream).sum(), maps)
    torch.testing.assert_close(ours_grad, reference_grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_size", [9, 7])
def test_finer_bins_read_the_map_of_the_cell_they_lie_in(output_size):
    # ps_roi_align with one map per output bin, each a copy of its cell's map, is the same assembling
    k, depth, m = 3, 4, output_size
    generator = torch.Generator().manual_seed(m)
    maps = torch.randn(2, depth * k * k, 11, 12, generator=generator, dtype=torch.float64)
    rois = random_rois(20, 2, generator)
    cell = [p * k // m for p in range(m)]
    copies = [d * k * k + cell[p] * k + cell[q] for d in range(depth) for p in range(m) for q in range(m)]
    reference = ps_roi_align(maps[:, copies], rois, m, 1 / 16, 2)
    torch.testing.assert_close(position_sensitive_assemble(maps, rois, k, m, 1 / 16, 2), reference,
                               atol=1e-5, rtol=0)


def test_assembling_copies_constant_cell_maps_by_hand():
    # channel c holds the constant c: bank d, bin (p, q) of a 4 x 4 assembling over 2 x 2 cells reads
    # channel 4 d + 2 (p // 2) + q // 2
    maps = torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 6, 6).contiguous()
    assembled = position_sensitive_assemble(maps, torch.tensor([[0.0, 8, 8, 40, 40]]), 2, 4, 1 / 8)
    bank0 = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    torch.testing.assert_close(assembled[0], torch.stack([bank0, bank0 + 4]))


def test_class_score_is_the_mean_of_max_inside_outside_and_the_mask_their_softmax():
    k, classes = 2, 3
    model = FCIS(classes, group_size=k, mask_size=k, **{**TINY, "head_channels": 8}).eval()
    generator = torch.Generator().manual_seed(0)
    outside, inside = torch.randn(2, classes, k, k, generator=generator).unbind(0)
    # bank 2c: class c's outside maps, bank 2c + 1: its inside maps, k x k cells each; constant in space
    banks = torch.stack([outside, inside], dim=1).reshape(1, 2 * classes * k * k, 1, 1).expand(1, -1, 4, 4)
    box_maps = torch.zeros(1, 4 * k * k, 4, 4)
    rois = torch.tensor([[0.0, 8.0, 8.0, 56.0, 56.0]])  # 3 x 3 feature pixels, each bin inside one cell
    class_logits, pairs, box_deltas = model.roi_outputs(banks.contiguous(), box_maps, rois)
    torch.testing.assert_close(class_logits[0], torch.maximum(inside, outside).mean(dim=(1, 2)))
    torch.testing.assert_close(F.softmax(pairs, dim=2)[0, :, 1], torch.sigmoid(inside - outside))
    assert box_deltas.shape == (1, 4)


def test_default_fcis_is_the_papers_resnet101_with_dilated_conv5_k7_and_12_anchors():
    with torch.device("meta"):
        model = pixelseg.create_model("fcis", num_classes=81)
    assert isinstance(model, FCIS)
    assert len(model.backbone.conv4[6]) == 23  # ResNet-101's conv4: 23 bottlenecks
    convs = [m for m in model.backbone.conv5.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs)
    assert all(c.dilation == (2, 2) for c in convs if c.kernel_size == (3, 3))
    assert (model.group_size, model.mask_size) == (7, 21)
    assert model.head.score_maps.out_channels == 2 * 81 * 7 * 7
    assert model.head.box_maps.out_channels == 4 * 7 * 7
    assert model.rpn.anchor_generator.sizes == ((64, 128, 256, 512),)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [12]
    assert model.rpn.post_nms_top_n() == 300 and model.rpn.nms_thresh == 0.7
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000
    assert (model.ohem_rois_per_image, model.box_nms_thresh, model.mask_voting) == (128, 0.3, True)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
def test_conv4_and_dilated_conv5_are_both_at_stride_16(backbone):
    model = FCIS(3, **{**TINY, "backbone": backbone}).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 96, 128))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(6, 8), (6, 8)]
    assert features["conv5"].shape[1] == model.backbone.conv5_channels


def test_fcis_layers_have_the_parameter_counts_of_the_reference_implementation():
    # msracver/FCIS, fcis/symbols/resnet_v1_101_fcis.py with experiments/fcis/cfgs/
    # resnet_v1_101_coco_fcis_end2end_ohem.yaml (NUM_CLASSES: 81, NUM_ANCHORS: 12): conv_new_1 is a 1x1
    # conv 2048 -> 1024 on conv5, fcis_cls_seg a 1x1 conv 1024 -> 7*7*num_classes*2, rpn_conv_3x3 a 3x3
    # conv 1024 -> 512 on conv4, rpn_bbox_pred a 1x1 conv 512 -> 4 * 12.
    with torch.device("meta"):
        model = pixelseg.create_model("fcis", num_classes=81)
    assert count(model.head.reduce) == 2048 * 1024 + 1024 == 2_098_176
    assert count(model.head.score_maps) == 1024 * 7938 + 7938 == 8_136_450
    # the paper (Sec. 3.4): a sibling 1x1 conv of 4 k^2 channels for box regression (the code has 8 k^2)
    assert count(model.head.box_maps) == 1024 * 4 * 49 + 4 * 49 == 200_900
    assert count(model.rpn.head.conv) == 1024 * 512 * 9 + 512 == 4_719_104
    assert count(model.rpn.head.bbox_pred) == 512 * 48 + 48 == 24_624
    # one sigmoid objectness logit per anchor (torchvision), where the code has a 2-way softmax (12,312)
    assert count(model.rpn.head.cls_logits) == 512 * 12 + 12 == 6_156
    # torchvision's ResNet-101: 44,549,160 parameters, of which the 1000-way fc has 2048 * 1000 + 1000
    assert count(model.backbone) == 44_549_160 - 2_049_000
    assert count(model) == 42_500_160 + 2_098_176 + 8_136_450 + 200_900 + 4_719_104 + 24_624 + 6_156


def test_training_gives_finite_losses_and_gradients_everywhere():
    torch.manual_seed(0)
    model = FCIS(4, **TINY).train()
    images, targets = collate_detection([SyntheticInstances(2, size=64)[i] for i in range(2)])
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    for layer in (model.head.score_maps, model.head.box_maps, model.rpn.head.cls_logits, model.backbone.conv4[0]):
        assert layer.weight.grad.abs().sum() > 0


def test_fcis_losses_decrease_over_a_few_steps_and_eval_returns_torchvision_detections():
    torch.manual_seed(0)
    model = pixelseg.create_model("fcis", num_classes=4, box_score_thresh=0.0, **TINY)
    outputs = trains_then_detects(model, LOSSES)
    for output, (height, width) in zip(outputs, [(64, 64), (48, 80)], strict=True):
        assert len(output["boxes"]) > 0
        assert output["masks"].max() > 0.5  # masks are probabilities at the image size
        assert (output["boxes"][:, 2] <= width + 1e-4).all() and (output["boxes"][:, 3] <= height + 1e-4).all()


def test_pasting_is_bilinear_sampling_with_zeros_outside_the_box():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 5, 5, generator=generator, dtype=torch.float64)
    boxes = torch.tensor([[2.0, 3.0, 10.0, 7.0], [-4.0, 1.5, 6.5, 13.0], [0.0, 0.0, 16.0, 12.0]], dtype=torch.float64)
    height, width = 12, 16
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    grid = torch.stack([(xs - x1) / (x2 - x1) * 2 - 1, (ys - y1) / (y2 - y1) * 2 - 1], dim=-1)
    reference = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(paste_masks(masks, boxes, height, width), reference[:, 0])
    # a full mask thresholded at 0.5 covers exactly the pixels of its box
    full = paste_masks(torch.ones(1, 4, 4), torch.tensor([[2.0, 3.0, 10.0, 7.0]]), height, width)[0]
    expected = torch.zeros(height, width, dtype=torch.bool)
    expected[3:7, 2:10] = True
    assert torch.equal(full >= 0.5, expected)


def test_mask_voting_averages_overlapping_masks_weighted_by_their_class_scores():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [1.0, 0, 10, 10], [50.0, 50, 60, 60]])
    scores = torch.tensor([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1], [0.0, 0.3, 0.7], [0.05, 0.9, 0.05]])
    masks = torch.rand(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    boxes[2] = boxes[0]  # the same box under another class
    frames, voted = vote_masks(boxes, scores, masks, kept=torch.tensor([0, 2]), labels=torch.tensor([1, 2]),
                               resolution=2)
    torch.testing.assert_close(frames, boxes[[0, 2]])
    # class 1: RoIs 0, 1 and 2 overlap (RoI 3 does not), weights 0.6, 0.2, 0.3
    expected_1 = (0.6 * masks[0, 1] + 0.2 * masks[1, 1] + 0.3 * masks[2, 1]) / 1.1
    expected_2 = (0.3 * masks[0, 2] + 0.1 * masks[1, 2] + 0.7 * masks[2, 2]) / 1.1
    torch.testing.assert_close(voted, torch.stack([expected_1, expected_2]))
    # a voter in a larger box widens the frame to the union of the voting boxes
    wider = boxes.clone()
    wider[1] = torch.tensor([0.0, 0, 10, 18])  # IoU 100 / 180 with the others
    frames, voted = vote_masks(wider, scores, masks, torch.tensor([0]), torch.tensor([1]), resolution=18)
    torch.testing.assert_close(frames, torch.tensor([[0.0, 0, 10, 18]]))
    # rows 12-17 lie more than half a mask cell below the other boxes: only RoI 1 (weight 0.2) reaches them
    assert 0 < voted[0, 12:].max() <= 0.2 / 1.1 + 1e-6


def test_saved_fcis_reloads_with_identical_detections(tmp_path: Path):
    torch.manual_seed(1)
    names = ["background", "a", "b", "c"]
    model = pixelseg.create_model("fcis", num_classes=4, class_names=names, box_score_thresh=0.0, **TINY)
    detections = assert_reloads_with_identical_detections(model, tmp_path / "model", names)
    assert len(detections["boxes"]) > 0


def test_an_image_without_objects_gives_finite_losses_and_gradients():
    model = FCIS(3, **TINY).train()
    losses = model([torch.rand(3, 64, 64)], [empty_detection_target()])
    sum(losses.values()).backward()
    assert all(torch.isfinite(value) for value in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_box_reg"] == 0


def test_bad_fcis_arguments_are_refused_in_one_line():
    with pytest.raises(PixelsegError, match="unknown FCIS keyword 'box_detection_per_img' "
                                            r"\(did you mean 'box_detections_per_img'\?\)"):
        pixelseg.create_model("fcis", num_classes=4, box_detection_per_img=5, **TINY)
    with pytest.raises(PixelsegError, match="at least 2"):
        FCIS(1, **TINY)
    with pytest.raises(PixelsegError, match="unknown FCIS backbone 'vgg'"):
        FCIS(3, **{**TINY, "backbone": "vgg"})
    with pytest.raises(PixelsegError, match="group_size <= mask_size"):
        FCIS(3, group_size=7, mask_size=5, **TINY)
    with pytest.raises(PixelsegError, match="in_channels=3"):
        pixelseg.create_model("fcis", num_classes=3, in_channels=1, **TINY)
    with pytest.raises(PixelsegError, match="needs targets"):
        FCIS(3, **TINY).train()([torch.rand(3, 64, 64)])
