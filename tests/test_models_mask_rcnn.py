"""Mask R-CNN: structure against torchvision, our pyramid RoIAlign, training steps, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_MASK_RCNN as TINY
from helpers import detector_losses_over_steps
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import MultiScaleRoIAlign

import pixelseg
from pixelseg.data.instances import SyntheticInstances
from pixelseg.errors import PixelsegError
from pixelseg.models.mask_rcnn import build_mask_rcnn
from pixelseg.models.modules.roi_ops import MultiLevelRoIAlign


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mask_rcnn_resnet50_fpn_has_44_4m_parameters_like_torchvision():
    with torch.device("meta"):
        ours = build_mask_rcnn(91)
        reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    assert count(ours) == count(reference) == 44_454_513
    # class-specific masks: one 28x28 mask per class from the 1x1 convolution after the deconvolution
    assert ours.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 91
    assert isinstance(ours.roi_heads.mask_roi_pool, MultiLevelRoIAlign)
    assert ours.roi_heads.mask_roi_pool.output_size == (14, 14)


def test_mobilenet_variant_taps_four_strides_under_the_fpn():
    model = build_mask_rcnn(4, **TINY)
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


@pytest.mark.parametrize("implementation", ["pixelseg", "torchvision"])
def test_pyramid_roi_align_equals_torchvision_multiscale_roi_align(implementation):
    gen = torch.Generator().manual_seed(0)
    names = ["0", "1", "2", "3"]
    features = {name: torch.randn(2, 5, 200 // 2 ** (k + 2), 256 // 2 ** (k + 2), generator=gen)
                for k, name in enumerate(names)}
    corners = torch.rand(2, 30, 2, generator=gen) * torch.tensor([256.0, 200.0])
    sizes = torch.rand(2, 30, 2, generator=gen) ** 2 * 250 + 1  # small and large boxes hit all levels
    boxes = [torch.cat([corners[i], corners[i] + sizes[i]], dim=1) for i in range(2)]
    shapes = [(200, 256), (190, 250)]
    ours = MultiLevelRoIAlign(names, 7, 2, implementation=implementation)(features, boxes, shapes)
    reference = MultiScaleRoIAlign(names, 7, 2)(features, boxes, shapes)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_mask_rcnn_losses_decrease_over_a_few_steps_on_synthetic_data():
    torch.manual_seed(0)
    model = build_mask_rcnn(4, **TINY)
    totals, _ = detector_losses_over_steps(
        model, {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"})
    assert totals[-1] < 0.7 * totals[0]


def test_saved_model_reloads_with_identical_detections_and_either_roi_align(tmp_path: Path):
    torch.manual_seed(1)
    model = pixelseg.create_model("mask_rcnn", num_classes=4, class_names=["background", "a", "b", "c"],
                                  box_score_thresh=0.0, **TINY).eval()
    image = SyntheticInstances(1, size=64)[0][0]
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    reloaded = pixelseg.from_pretrained(tmp_path).eval()  # a run folder: its model/ is used
    assert reloaded.class_names == ["background", "a", "b", "c"]
    with torch.no_grad():
        expected = model([image])[0]
        again = reloaded([image])[0]
        reloaded.roi_heads.box_roi_pool.implementation = "torchvision"
        reloaded.roi_heads.mask_roi_pool.implementation = "torchvision"
        with_torchvision = reloaded([image])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(again[key], expected[key])
        torch.testing.assert_close(with_torchvision[key], expected[key], rtol=1e-4, atol=1e-4)


def test_bad_model_arguments_and_directories(tmp_path: Path):
    with pytest.raises(PixelsegError, match="unknown Mask R-CNN backbone 'vgg'"):
        build_mask_rcnn(3, backbone="vgg")
    with pytest.raises(PixelsegError, match="at least 2"):
        build_mask_rcnn(1)
    with pytest.raises(PixelsegError, match="no saved model here"):
        pixelseg.from_pretrained(tmp_path)
    with pytest.raises(PixelsegError, match="3 class names for 4 classes"):
        pixelseg.create_model("mask_rcnn", num_classes=4, class_names=["background", "a", "b"], **TINY)
    with pytest.raises(PixelsegError, match="in_channels=3"):
        pixelseg.create_model("mask_rcnn", num_classes=4, in_channels=1, **TINY)


def test_folders_saved_by_the_old_instance_trainer_still_load(tmp_path: Path):
    from pixelseg.io.checkpoint import save_state_dict_atomic

    torch.manual_seed(2)
    model = build_mask_rcnn(3, **TINY).eval()
    save_state_dict_atomic(model.state_dict(), tmp_path / "model.safetensors")
    old_config = {"task": "instance", "name": "mask_rcnn", "num_classes": 3,
                  "class_names": ["background", "cat", "dog"], "kwargs": dict(TINY), "category_ids": [0, 17, 18]}
    (tmp_path / "config.json").write_text(json.dumps(old_config))
    reloaded = pixelseg.from_pretrained(tmp_path).eval()
    assert reloaded.class_names == ["background", "cat", "dog"]
    assert reloaded.pixelseg_config["task"] == "instance"
    assert reloaded.pixelseg_config["category_ids"] == [0, 17, 18]
    assert reloaded.pixelseg_config["kwargs"]["class_names"] == ["background", "cat", "dog"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor)


def test_mask_rcnn_is_listed_with_its_parameter_count_on_the_meta_device():
    assert "mask_rcnn" in pixelseg.list_models() and "keypoint_rcnn" in pixelseg.list_models()
    with torch.device("meta"):
        model = pixelseg.create_model("mask_rcnn", num_classes=91)
    assert count(model) == 44_454_513
