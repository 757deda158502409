"""PANet: the bottom-up path, adaptive feature pooling, the fc fusion, parameters, training, output format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_MASK_RCNN as TINY
from helpers import (
    assert_reloads_with_identical_detections,
    assert_torchvision_detections,
    detector_losses_over_steps,
)

import pixelseg
from pixelseg.data.instances import SyntheticInstances
from pixelseg.errors import PixelsegError
from pixelseg.models.mask_rcnn import build_mask_rcnn
from pixelseg.models.modules.roi_ops import MultiLevelRoIAlign
from pixelseg.models.panet import AllLevelsRoIAlign, FusedMaskHead, build_panet

LEVELS = ["0", "1", "2", "3"]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def test_panet_adds_the_hand_counted_parameters_to_mask_rcnn_resnet50_fpn():
    with torch.device("meta"):
        ours, mask_rcnn = build_panet(91), build_mask_rcnn(91)
    bottom_up = 3 * (conv(256, 256) + conv(256, 256))  # N3-N5: a stride-2 conv and a fusing conv each
    box_levels = 3 * linear(256 * 7 * 7, 1024)  # fc6 for each of the three further levels
    mask_levels = 3 * conv(256, 256)  # conv1 for each of the three further levels
    fc_fusion = conv(256, 256) + conv(256, 128) + linear(128 * 14 * 14, 28 * 28)
    assert count(mask_rcnn) == 44_454_513
    assert count(ours) - count(mask_rcnn) == bottom_up + box_levels + mask_levels + fc_fusion == 64_403_856


def test_bottom_up_path_keeps_n2_and_builds_n3_to_n5_at_the_fpn_strides():
    torch.manual_seed(0)
    model = build_panet(4, **TINY).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fpn = model.backbone.fpn(images)
        levels = model.backbone(images)
    assert list(levels) == [*LEVELS, "pool"]
    assert [tuple(f.shape) for f in levels.values()] == [(2, 16, s, s) for s in (16, 8, 4, 2, 1)]
    torch.testing.assert_close(levels["0"], fpn["0"])  # N2 = P2
    for name in LEVELS[1:]:
        assert not torch.allclose(levels[name], fpn[name])
        assert levels[name].min() >= 0  # ReLU after the fusing conv
    # N3 = ReLU(conv(ReLU(conv_s2(N2)) + P3)), written out
    down, fuse = model.backbone.downsample[0], model.backbone.fuse[0]
    expected = torch.relu(fuse(torch.relu(down(fpn["0"])) + fpn["1"]))
    torch.testing.assert_close(levels["1"], expected)


@pytest.mark.parametrize("size", [8.0, 200.0])
def test_adaptive_pooling_reads_every_level_where_fpn_reads_one(size):
    features = {name: torch.randn(1, 4, 64 // 2**k, 64 // 2**k, requires_grad=True)
                for k, name in enumerate(LEVELS)}
    boxes = [torch.tensor([[4.0, 4.0, 4.0 + size, 4.0 + size]])]
    pooled = AllLevelsRoIAlign(LEVELS, 7, 2)(features, boxes, [(256, 256)])
    assert pooled.shape == (1, 4, 4, 7, 7)
    pooled.sum().backward()
    assert all(features[name].grad.abs().sum() > 0 for name in LEVELS)
    for name in LEVELS:
        features[name].grad = None
    MultiLevelRoIAlign(LEVELS, 7, 2)(features, boxes, [(256, 256)]).sum().backward()
    assert sum(features[name].grad is not None and bool(features[name].grad.abs().sum() > 0)
               for name in LEVELS) == 1
    # each level's slice is the plain RoIAlign of that level
    for k, name in enumerate(LEVELS):
        single = MultiLevelRoIAlign([name], 7, 2)({name: features[name]}, boxes, [(256, 256)])
        torch.testing.assert_close(pooled[:, k], single)


def test_box_head_fuses_levels_by_maximum_after_the_first_fc():
    torch.manual_seed(0)
    head = build_panet(4, **TINY).roi_heads.box_head
    pooled = torch.randn(5, 4, 16, 7, 7)
    per_level = torch.stack([fc(pooled[:, k].flatten(1)) for k, fc in enumerate(head.fc6)])
    expected = torch.relu(head.fc7(torch.relu(per_level.max(dim=0).values)))
    torch.testing.assert_close(head(pooled), expected)


def test_fc_fusion_gives_one_28x28_mask_added_to_every_class():
    torch.manual_seed(0)
    head = FusedMaskHead(16, 8, num_classes=5)
    pooled = torch.randn(3, 4, 16, 14, 14)
    fcn, fc = head.paths(pooled)
    assert fcn.shape == (3, 5, 28, 28)
    assert fc.shape == (3, 1, 28, 28)
    assert head.conv5_fc.out_channels == head.conv4_fc.out_channels // 2 == 4
    torch.testing.assert_close(head(pooled), fcn + fc)
    with torch.no_grad():
        before = head(pooled)
        head.fc.bias += 1.5  # shifting the fc path shifts every class's logits alike
        torch.testing.assert_close(head(pooled), before + 1.5)


def test_panet_losses_decrease_over_a_few_steps_on_synthetic_data():
    torch.manual_seed(0)
    model = build_panet(4, **TINY)
    totals, _ = detector_losses_over_steps(
        model, {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"})
    assert totals[-1] < 0.7 * totals[0]


def test_panet_returns_torchvision_detections_and_reloads_identically(tmp_path: Path):
    torch.manual_seed(1)
    names = ["background", "a", "b", "c"]
    model = pixelseg.create_model("panet", num_classes=4, class_names=names, box_score_thresh=0.0,
                                  box_detections_per_img=10, **TINY).eval()
    images = [SyntheticInstances(2, size=64)[i][0] for i in range(2)]
    images[1] = images[1][:, :48, :]
    with torch.no_grad():
        outputs = model(images)
    assert_torchvision_detections(outputs, [(64, 64), (48, 64)], max_count=10, num_classes=4)
    assert sum(len(o["boxes"]) for o in outputs) > 0
    assert_reloads_with_identical_detections(model, tmp_path / "model", names)


def test_panet_refuses_unknown_keywords_and_too_few_classes():
    with pytest.raises(PixelsegError, match="did you mean 'box_detections_per_img'"):
        build_panet(4, box_detection_per_img=5, **TINY)
    with pytest.raises(PixelsegError, match="at least 2"):
        build_panet(1, **TINY)
