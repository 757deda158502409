"""PolarMask: structure (36 rays, FCOS towers on P3-P7), ray targets and polygons against geometry worked
out by hand (discs and squares), centre-ness and the polar IoU loss, training steps, the detection output
format, save/load and bad arguments."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_reloads_with_identical_detections,
    empty_detection_target,
    trains_then_detects,
)
from torch import nn

import pixelseg
from pixelseg.errors import PixelsegError
from pixelseg.models.polarmask import (
    PolarMask,
    polar_centerness,
    polar_iou_loss,
    rasterise_polygons,
    ray_angles,
    ray_lengths,
)

TINY = dict(backbone="resnet18", fpn_channels=64, min_size=64, max_size=64, detections_per_image=20)


def disc(size: int, cx: float, cy: float, radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2


def square_rays(half: float, num_rays: int = 36) -> torch.Tensor:
    """From the centre of a square of half side ``half``: ``half / max(|cos|, |sin|)`` (geometry)."""
    angles = torch.arange(num_rays, dtype=torch.float64) * 2 * math.pi / num_rays
    return (half / torch.maximum(angles.cos().abs(), angles.sin().abs())).float()


def test_default_polarmask_is_the_papers_resnet50_fpn_with_36_rays_on_p3_to_p7():
    with torch.device("meta"):
        model = pixelseg.create_model("polarmask", num_classes=81)
    assert isinstance(model, PolarMask)
    assert len(model.backbone.body.layer3) == 6  # ResNet-50: 3, 4, 6, 3 bottlenecks
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    assert model.head.rays.out_channels == 36
    assert model.head.classes.out_channels == 80 and model.head.centerness.out_channels == 1
    for tower in (model.head.cls_tower, model.head.mask_tower):
        assert sum(isinstance(m, nn.Conv2d) for m in tower) == 4
        assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in tower) == 4
    assert len(model.head.scales) == 5
    torch.testing.assert_close(ray_angles()[1], torch.tensor(math.radians(10)))


def test_head_outputs_one_row_per_position_of_p3_to_p7():
    model = PolarMask(4, **TINY).eval()
    features = list(model.backbone(torch.zeros(1, 3, 128, 128)).values())
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    classes, centerness, rays = model.head(features)
    assert [c.shape for c in classes] == [(1, n * n, 3) for n in (16, 8, 4, 2, 1)]
    assert [c.shape for c in centerness] == [(1, n * n) for n in (16, 8, 4, 2, 1)]
    assert all(r.shape[-1] == 36 and (r > 0).all() for r in rays)
    points = model.points(features)
    torch.testing.assert_close(points[0][:2], torch.tensor([[4.0, 4.0], [12.0, 4.0]]))


def test_ray_targets_of_a_disc_and_a_square_match_their_geometry():
    rays = ray_lengths(disc(64, 32.0, 32.0, 20.0), torch.tensor([[32.0, 32.0]]))
    assert rays.shape == (1, 36)
    assert (rays - 20.0).abs().max() <= 1.0
    square = torch.zeros(64, 64, dtype=torch.bool)
    square[16:48, 16:48] = True  # half side 16 around (32, 32)
    rays = ray_lengths(square, torch.tensor([[32.0, 32.0]]))
    assert (rays[0] - square_rays(16.0)).abs().max() <= 1.0
    # off-centre: the ray to the right is the distance to the far edge, the longest that hits the contour
    rays = ray_lengths(square, torch.tensor([[20.0, 32.0]]))
    assert abs(rays[0, 0].item() - 28.0) <= 1.0 and abs(rays[0, 18].item() - 4.0) <= 1.0
    # a concave shape (a ring's gap): the longest ray, not the first contour crossing
    ring = disc(64, 32.0, 32.0, 24.0) & ~disc(64, 32.0, 32.0, 8.0)
    ring[30:34, 32:] = True
    assert abs(ray_lengths(ring, torch.tensor([[32.5, 32.0]]))[0, 9].item() - 24.0) <= 1.0


def test_polar_centerness_and_polar_iou_loss_on_hand_worked_values():
    torch.testing.assert_close(polar_centerness(torch.tensor([[1.0, 2.0, 4.0]])), torch.tensor([0.5]))
    torch.testing.assert_close(polar_centerness(torch.full((1, 36), 7.0)), torch.tensor([1.0]))
    target = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(polar_iou_loss(target, target), torch.tensor([0.0]))
    torch.testing.assert_close(polar_iou_loss(2 * target, target), torch.tensor([math.log(2.0)]))
    # mixed: sum max = 2+2+3+5 = 12, sum min = 1+1+3+4 = 9
    torch.testing.assert_close(polar_iou_loss(torch.tensor([[2.0, 1.0, 3.0, 5.0]]), target),
                               torch.tensor([math.log(12 / 9)]))


def test_polygons_rasterise_to_the_square_and_the_disc_they_describe():
    masks = rasterise_polygons(torch.tensor([[32.0, 32.0], [30.0, 34.0]]),
                               torch.stack([square_rays(16.0), torch.full((36,), 20.0)]), (64, 64))
    square = torch.zeros(64, 64, dtype=torch.bool)
    square[16:48, 16:48] = True
    # rays at 40° and 50° miss each corner: the polygon cuts a triangle of legs 16 (1 - tan 40°) off it
    corners = 4 * 0.5 * (16 * (1 - math.tan(math.radians(40)))) ** 2
    assert (masks[0] & ~square).sum() == 0 and abs((square & ~masks[0]).sum().item() - corners) <= 4
    # a regular 36-gon inscribed in a circle of radius 20: area 18 r^2 sin(10°)
    assert abs(masks[1].sum().item() - 18 * 400 * math.sin(math.radians(10))) <= 20
    reference = disc(64, 30.0, 34.0, 20.0)
    assert (masks[1] & reference).sum() / (masks[1] | reference).sum() > 0.97


def test_targets_are_positive_inside_the_mask_near_its_mass_centre_on_the_fitting_level():
    model = PolarMask(3, **TINY)
    masks = torch.stack([disc(64, 20.0, 20.0, 10.0), disc(64, 44.0, 44.0, 12.0)]).to(torch.uint8)
    target = {"masks": masks, "labels": torch.tensor([1, 2]), "boxes": torch.zeros(2, 4)}
    features = [torch.zeros(1, 1, 64 // s, 64 // s) for s in (8, 16, 32, 64, 128)]
    points = model.points(features)
    labels, rays = model.targets(points, target)
    p3 = len(points[0])
    assert set(labels[:p3].unique().tolist()) == {0, 1, 2} and (labels[p3:] == 0).all()  # rays < 64: P3 only
    for label, (cx, cy) in ((1, (20.0, 20.0)), (2, (44.0, 44.0))):
        chosen = points[0][labels[:p3] == label]
        assert ((chosen - torch.tensor([cx, cy])).abs() <= 1.5 * 8).all()
    centre = (points[0] == torch.tensor([20.0, 20.0])).all(1).nonzero()[0, 0]
    assert labels[centre] == 1 and (rays[centre] - 10.0).abs().max() <= 1.0


def test_polarmask_losses_decrease_over_a_few_steps_and_eval_returns_torchvision_detections():
    torch.manual_seed(0)
    model = pixelseg.create_model("polarmask", num_classes=4, **TINY)
    outputs = trains_then_detects(model, {"loss_classifier", "loss_rays", "loss_centerness"})
    for output in outputs:
        assert set(output["masks"].unique().tolist()) <= {0.0, 1.0}
    assert len(outputs[0]["boxes"]) > 0


def test_saved_polarmask_reloads_with_identical_detections(tmp_path: Path):
    torch.manual_seed(1)
    model = pixelseg.create_model("polarmask", num_classes=4, class_names=["background", "a", "b", "c"],
                                  score_threshold=0.0, **TINY)
    expected = assert_reloads_with_identical_detections(model, tmp_path / "model", ["background", "a", "b", "c"])
    assert len(expected["boxes"]) > 0


def test_bad_polarmask_arguments():
    with pytest.raises(PixelsegError, match="at least 2"):
        PolarMask(1, **TINY)
    with pytest.raises(PixelsegError, match="4 bounds"):
        PolarMask(3, regress_ranges=(64, 128), **TINY)
    with pytest.raises(PixelsegError, match="in_channels=3"):
        pixelseg.create_model("polarmask", num_classes=3, in_channels=1, **TINY)


def test_an_image_without_objects_gives_finite_losses_and_gradients():
    model = PolarMask(3, **TINY).train()
    losses = model([torch.rand(3, 64, 64)], [empty_detection_target()])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_rays"] == 0
