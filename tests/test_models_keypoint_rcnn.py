"""Keypoint R-CNN head (stretch goal): structure against torchvision, synthetic corners, training steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

import pixelseg
from pixelseg.data.instances import collate_detection
from pixelseg.data.keypoints import SyntheticKeypoints
from pixelseg.models.keypoint_rcnn import build_keypoint_rcnn
from pixelseg.models.modules.roi_ops import MultiLevelRoIAlign


def test_keypoint_rcnn_resnet50_fpn_matches_torchvision_parameter_count():
    with torch.device("meta"):
        ours = build_keypoint_rcnn(17)
        reference = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert isinstance(ours.roi_heads.keypoint_roi_pool, MultiLevelRoIAlign)
    with torch.device("meta"):
        registered = pixelseg.create_model("keypoint_rcnn", num_classes=2, num_keypoints=17)
    assert sum(p.numel() for p in registered.parameters()) == count


def test_registered_keypoint_rcnn_saves_and_loads_like_every_model(tmp_path):
    torch.manual_seed(0)
    model = pixelseg.create_model("keypoint_rcnn", num_classes=2, num_keypoints=3, backbone="mobilenet_v3_large",
                                  width_mult=0.35, fpn_channels=16, keypoint_head_channels=8,
                                  keypoint_head_layers=2, min_size=64, max_size=64,
                                  keypoint_names=["top", "left", "right"])
    model.save_pretrained(tmp_path)
    reloaded = pixelseg.from_pretrained(tmp_path)
    assert reloaded.keypoint_names == ["top", "left", "right"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor)


def test_synthetic_keypoints_are_ordered_triangle_corners_inside_their_boxes():
    dataset = SyntheticKeypoints(12)
    for index in range(len(dataset)):
        image, target = dataset[index]
        points = target["keypoints"][..., :2].numpy()
        assert image.shape == (3, 96, 96) and len(points) >= 1
        assert np.all(points[:, 0, 1] <= points[:, 1:, 1].min(axis=1))  # keypoint 0 is the top corner
        assert np.all(points[:, 1, 0] <= points[:, 2, 0])  # then left, then right
        boxes = target["boxes"].numpy()
        assert np.all(points[..., 0] >= boxes[:, None, 0] - 1e-4) and np.all(points[..., 0] <= boxes[:, None, 2] + 1e-4)


def test_keypoint_losses_decrease_over_a_few_steps():
    torch.manual_seed(0)
    model = build_keypoint_rcnn(3, backbone="mobilenet_v3_large", width_mult=0.35, fpn_channels=16,
                                keypoint_head_channels=16, keypoint_head_layers=2, min_size=96, max_size=96,
                                anchor_sizes=[8, 16, 32, 64, 128],
                                rpn_post_nms_top_n_train=64, box_batch_size_per_image=32)
    images, targets = collate_detection([SyntheticKeypoints(2)[i] for i in range(2)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    keypoint_losses = []
    for _ in range(10):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        keypoint_losses.append(losses["loss_keypoint"].item())
    assert keypoint_losses[-1] < keypoint_losses[0]
    model.eval()
    with torch.no_grad():
        output = model(images[:1])[0]
    assert output["keypoints"].shape[1:] == (3, 3)


def test_an_unknown_keypoint_rcnn_keyword_is_refused_naming_the_closest() -> None:
    """torchvision passes unknown keywords on to its image transform, which ignores them: refuse them instead."""
    from pixelseg.errors import PixelsegError
    from pixelseg.models.registry import create_model

    with pytest.raises(PixelsegError, match="unknown Keypoint R-CNN keyword 'representation_size'"):
        create_model("keypoint_rcnn", num_classes=2, num_keypoints=3, backbone="mobilenet_v3_large",
                     width_mult=0.35, fpn_channels=16, representation_size=32)
    with pytest.raises(PixelsegError, match="did you mean 'keypoint_head_layers'"):
        create_model("keypoint_rcnn", num_classes=2, num_keypoints=3, backbone="mobilenet_v3_large",
                     width_mult=0.35, fpn_channels=16, keypoint_head_layer=2)
