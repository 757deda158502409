"""Panoptic FPN (Kirillov, Girshick, He & Dollár, CVPR 2019): semantic branch, loss weighting, fusion, size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelseg.data.synthetic_panoptic import SyntheticPanoptic
from pixelseg.errors import PixelsegError
from pixelseg.models.panoptic_fpn import COCO_STUFF_AREA, SemanticFPNHead, fuse_panoptic
from pixelseg.models.registry import create_model

TINY = {"backbone": "mobilenet_v3_large", "width_mult": 0.35, "fpn_channels": 16, "representation_size": 32,
        "mask_head_channels": 8, "semantic_channels": 16, "min_size": 64, "max_size": 64,
        "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32,
        "box_batch_size_per_image": 32}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model("panoptic_fpn", num_classes=4, num_stuff_classes=3, **{**TINY, **kwargs})


def test_semantic_branch_of_the_paper_has_the_hand_counted_parameters():
    # 256 → 128 channels; P2 and P3 one 3x3 conv, P4 two, P5 three (no bias: GroupNorm follows):
    # first convs 4 · (256·128·9), later convs 3 · (128·128·9), 7 GroupNorms of 2·128, 1x1 classifier with bias.
    convs = 4 * 256 * 128 * 9 + 3 * 128 * 128 * 9 + 7 * 2 * 128
    head = SemanticFPNHead(54, 256, 128)  # COCO panoptic: 53 stuff classes + "other"
    assert count(head) == convs + 128 * 54 + 54 == 1_630_774
    stages = [sum(isinstance(m, nn.Conv2d) for m in scale) for scale in head.scale_heads]
    upsamplings = [sum(isinstance(m, nn.Upsample) for m in scale) for scale in head.scale_heads]
    assert stages == [1, 1, 2, 3] and upsamplings == [0, 1, 2, 3]
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for scale in head.scale_heads
               for m in scale if isinstance(m, nn.GroupNorm))


def test_semantic_branch_sums_the_levels_at_quarter_scale_and_returns_the_input_size():
    head = SemanticFPNHead(5, 16, 8)
    features = [torch.randn(2, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert head(features).shape == (2, 5, 64, 96)


def test_r50_panoptic_fpn_is_torchvisions_mask_rcnn_plus_the_semantic_branch():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = create_model("panoptic_fpn", num_classes=81, num_stuff_classes=53)  # COCO panoptic: 80 + 53
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    assert count(model) == count(reference) + 1_630_774 == 46_031_467
    assert count(model.semantic_head) == 1_630_774


def test_semantic_loss_is_weighted_by_lambda_s():
    half, full = tiny_model(), tiny_model(semantic_loss_weight=1.0)
    full.load_state_dict(half.state_dict())
    images, targets = zip(*[SyntheticPanoptic(2, size=64)[i] for i in range(2)], strict=True)
    torch.manual_seed(1)
    low = half(list(images), list(targets))
    torch.manual_seed(1)
    high = full(list(images), list(targets))
    assert set(low) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                        "loss_semantic"}
    torch.testing.assert_close(low["loss_semantic"], 0.5 * high["loss_semantic"])
    # the semantic loss is cross-entropy against the "other"/stuff target with void ignored
    assert 0 < float(high["loss_semantic"].detach()) < 3.0
    assert half.semantic_loss_weight == 0.5  # the paper's COCO value is the default


def test_semantic_targets_are_resized_like_the_image_and_padded_with_void():
    semantic = torch.tensor([[0, 1], [2, 255]])
    batch = create_model("panoptic_fpn", num_classes=2, num_stuff_classes=2, **TINY)._semantic_targets(
        [{"semantic": semantic}], [(4, 4)], (4, 6))
    expected = torch.full((1, 4, 6), 255)
    expected[0, :4, :4] = semantic.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(batch, expected)


def test_fusion_gives_overlaps_to_the_higher_score_and_drops_covered_instances_and_small_stuff():
    h = w = 10
    masks = torch.zeros(4, h, w)
    masks[0, 0:4, 0:4] = 0.9  # score 0.95: 16 px
    masks[1, 2:6, 2:6] = 0.8  # score 0.9: 16 px, 4 under instance 0 → keeps 12 (75 %)
    masks[2, 0:4, 0:3] = 0.7  # score 0.8: 12 px, all under instance 0 → dropped
    masks[3, 8:10, 8:10] = 0.9  # score 0.3: below the score threshold
    scores = torch.tensor([0.95, 0.9, 0.8, 0.3])
    labels = torch.tensor([1, 2, 1, 3])
    semantic = torch.full((h, w), 1)
    semantic[:, 9] = 2  # 10 px of stuff 2: below the area threshold
    semantic[5:7, 0:2] = 0  # "other" pixels no instance covers: void
    ids, segments = fuse_panoptic(masks, scores, labels, semantic, stuff_area=11)
    assert segments.tolist() == [[1, 1, 1], [2, 2, 1], [3, 1, 0]]
    assert bool((ids[0:4, 0:4] == 1).all())
    assert int((ids == 2).sum()) == 12 and bool((ids[4:6, 2:6] == 2).all())
    assert bool((ids[5:7, 0:2] == 0).all()) and bool((ids[:, 9] == 0).all())
    assert int((ids == 3).sum()) == h * w - 16 - 12 - 4 - 10
    # with a stricter overlap threshold instance 1 (keeps 75 %) is dropped as well
    _, strict = fuse_panoptic(masks, scores, labels, semantic, stuff_area=11, overlap_threshold=0.2)
    assert strict[:, 1].tolist() == [1, 1] and strict[:, 2].tolist() == [1, 0]


def test_stuff_area_threshold_scales_the_papers_4096_pixels_with_the_image():
    assert COCO_STUFF_AREA * 640 * 480 == pytest.approx(4096)
    assert round(COCO_STUFF_AREA * 128 * 128) == 218


def test_eval_output_is_a_consistent_panoptic_segmentation_and_training_lowers_the_loss():
    model = tiny_model()
    images, targets = zip(*[SyntheticPanoptic(2, size=64)[i] for i in range(2)], strict=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(8):
        losses = model(list(images), list(targets))
        total = sum(losses.values())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0]
    model.eval()
    model.instance_score_threshold = 0.0
    with torch.no_grad():
        outputs = model([images[0], F.interpolate(images[1][None], size=(48, 80))[0]])
    for output, size in zip(outputs, [(64, 64), (48, 80)], strict=True):
        assert output["panoptic"].shape == size and output["semantic"].shape == (4, *size)
        present = set(output["panoptic"].unique().tolist()) - {0}
        assert present == set(output["segments"][:, 0].tolist())
        stuff = output["segments"][output["segments"][:, 2] == 0, 1]
        assert bool(((stuff >= 1) & (stuff <= 3)).all())


def test_bad_keywords_are_refused_by_name():
    with pytest.raises(PixelsegError, match="did you mean 'semantic_channels'"):
        create_model("panoptic_fpn", num_classes=4, num_stuff_classes=3, semantic_channel=64)
    with pytest.raises(PixelsegError, match="num_stuff_classes must be at least 1"):
        create_model("panoptic_fpn", num_classes=4, num_stuff_classes=0)
