"""TensorMask: the natural and aligned representations (align2nat, nat2align, swap_align2nat) against worked
examples and torch's own interpolation, the tensor bipyramid's shapes, the label assignment on a hand-worked
box, pasting against ``grid_sample``, FL*, the parameter count of the reference configuration, training steps,
the detection output format, save/load and bad arguments."""

from __future__ import annotations

import math
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
from torchvision.ops import roi_align

import pixelseg
from pixelseg.errors import PixelsegError
from pixelseg.models.modules.one_stage import stride4_pyramid
from pixelseg.models.tensormask import (
    TensorMask,
    align2nat,
    assign_windows,
    nat2align,
    paste_windows,
    sigmoid_focal_loss_star,
    swap_align2nat,
    window_boxes,
)

TINY = dict(backbone="resnet18", fpn_channels=32, class_channels=32, box_channels=32, mask_channels=32, num_convs=2,
            num_levels=3, window_sizes=[7, 11], min_size=64, max_size=64, detections_per_image=20)
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask"}
NAN = float("nan")


# ---- the representations (Sec. 3) -----------------------------------------------------------------------------------


def test_align2nat_and_nat2align_match_a_hand_worked_example():
    # V = 3 windows cells along y, U = 1, a 4-pixel column: aligned value 10 v + y.
    aligned = (10 * torch.arange(3.0)[:, None] + torch.arange(4.0)[None]).reshape(1, 3, 1, 4, 1)
    # natural cell v at y is pixel y + v - 1: v = 0 looks one pixel up, v = 2 one pixel down
    expected = torch.tensor([[NAN, 0, 1, 2], [10, 11, 12, 13], [21, 22, 23, NAN]]).reshape(1, 3, 1, 4, 1)
    natural = align2nat(aligned, fill=NAN)
    torch.testing.assert_close(natural, expected, equal_nan=True)
    back = torch.tensor([[0, 1, 2, NAN], [10, 11, 12, 13], [NAN, 21, 22, 23]]).reshape(1, 3, 1, 4, 1)
    torch.testing.assert_close(nat2align(natural, fill=NAN), back, equal_nan=True)
    # the same along (U, W)
    torch.testing.assert_close(align2nat(aligned.permute(0, 2, 1, 4, 3), fill=NAN),
                               expected.permute(0, 2, 1, 4, 3), equal_nan=True)


def test_align2nat_and_nat2align_are_inverses_where_the_window_stays_on_the_map():
    tensor = torch.randn(2, 5, 3, 9, 11)
    for there, back in ((align2nat, nat2align), (nat2align, align2nat)):
        round_trip = back(there(tensor, fill=NAN), fill=NAN)
        kept = ~round_trip.isnan()
        torch.testing.assert_close(round_trip[kept], tensor[kept])
        # a cell survives when its pixel shifted by its window offset is on the map: (9 - |dv|)(11 - |du|)
        expected = sum((9 - abs(dv)) * (11 - abs(du)) for dv in (-2, -1, 0, 1, 2) for du in (-1, 0, 1))
        assert int(kept.sum()) == 2 * expected


def test_the_aligned_view_of_windows_on_one_image_holds_each_pixels_value_in_every_cell():
    # Natural windows cut from one image (built by the definition, loop by loop): every window that overlaps a
    # pixel sees the same value there, so the aligned sub-tensor at a pixel is that pixel's value throughout.
    image = torch.randn(6, 7)
    windows_v, windows_u = 3, 5
    natural = torch.full((1, windows_v, windows_u, 6, 7), NAN)
    for v in range(windows_v):
        for u in range(windows_u):
            for y in range(6):
                for x in range(7):
                    py, px = y + v - windows_v // 2, x + u - windows_u // 2
                    if 0 <= py < 6 and 0 <= px < 7:
                        natural[0, v, u, y, x] = image[py, px]
    aligned = nat2align(natural, fill=NAN)[0]
    for v in range(windows_v):
        for u in range(windows_u):
            known = ~aligned[v, u].isnan()
            torch.testing.assert_close(aligned[v, u][known], image[known])
    assert not aligned[1, 2].isnan().any()  # the centre cell is every pixel's own window


def test_swap_align2nat_at_scale_1_is_align2nat():
    tensor = torch.randn(2, 5, 7, 6, 8)
    torch.testing.assert_close(swap_align2nat(tensor, 1, fill=-6.0), align2nat(tensor, fill=-6.0))


def test_swap_align2nat_upsamples_the_window_like_bilinear_interpolation():
    window = torch.randn(3, 3)
    aligned = window[None, :, :, None, None].expand(1, 3, 3, 24, 24).contiguous()  # the same at every pixel
    natural = swap_align2nat(aligned, 2)
    assert natural.shape == (1, 6, 6, 12, 12)
    reference = F.interpolate(window[None, None], scale_factor=2, mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(natural[0, :, :, 5, 6], reference)


def test_swap_align2nat_moves_whole_pixels_onto_the_coarse_grid():
    rows, cols = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    aligned = (100 * rows + cols)[None, None, None].expand(1, 3, 3, 10, 12).contiguous()
    natural = swap_align2nat(aligned, 2, fill=NAN)
    assert natural.shape == (1, 6, 6, 5, 6)
    # the window of coarse cell (y, x) is centred at 2 (y + 0.5) fine pixels and 6 one-pixel cells wide, so it
    # covers fine pixels 2y - 2 .. 2y + 3; its cell (v, u) is the fine pixel (2y - 2 + v, 2x - 2 + u)
    for y, x in ((2, 3), (0, 0), (4, 5)):
        for v in range(6):
            for u in range(6):
                py, px = 2 * y - 2 + v, 2 * x - 2 + u
                value = natural[0, v, u, y, x]
                if 0 <= py < 10 and 0 <= px < 12:
                    assert value == 100 * py + px
                else:
                    assert value.isnan()


def test_swap_align2nat_windows_are_the_ground_truth_crops_of_their_window_boxes():
    # A mask constant on the 4 x 4 blocks of the stride-4 grid, held by every aligned cell of its block: after
    # swap_align2nat to P3 (scale 2, 3 -> 6 cells), each window must be roi_align's crop of the image mask at
    # that cell's window box (24 pixels, centred at 8 (x + 0.5)): the training targets and the predictions
    # describe the same pixels.
    blocks = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)).round()
    image = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 64 x 64
    aligned = blocks[None, None, None].expand(1, 3, 3, 16, 16).contiguous()
    natural = swap_align2nat(aligned, 2, fill=NAN)[0]  # (6, 6, 8, 8)
    windows = window_boxes([(8, 8)], [[24.0]], [8])  # (64, 4), row-major cells
    crops = roi_align(image[None, None], torch.cat([torch.zeros(64, 1), windows], 1), (6, 6), 1.0, 0, aligned=True)
    predicted = natural.permute(2, 3, 0, 1).reshape(64, 6, 6)
    known = ~predicted.isnan()
    assert known.float().mean() > 0.6
    torch.testing.assert_close(predicted[known], crops[:, 0][known])


def test_windows_of_even_size_are_refused():
    with pytest.raises(PixelsegError, match="odd size"):
        align2nat(torch.zeros(1, 4, 3, 5, 5))
    with pytest.raises(PixelsegError, match="odd cell counts"):
        TensorMask(3, **{**TINY, "window_sizes": (8,)})


# ---- the model's structure -------------------------------------------------------------------------------------------


def test_default_tensormask_is_the_reference_resnet50_fpn_bipyramid_on_p2_to_p7():
    with torch.device("meta"):
        model = pixelseg.create_model("tensormask", num_classes=81)
    assert isinstance(model, TensorMask)
    assert len(model.backbone.body.layer3) == 6  # ResNet-50: 3, 4, 6, 3 bottlenecks
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    assert model.strides == [4, 8, 16, 32, 64, 128]
    assert model.window_sizes == (11, 15) and model.window_pixels()[0] == [44.0, 60.0]  # detectron2's anchors
    assert model.mask_cells(5, 1) == 15 * 32
    head = model.head
    assert [m.out_channels for m in head.class_tower if isinstance(m, nn.Conv2d)] == [256] * 4
    assert [m.out_channels for m in head.box_tower if isinstance(m, nn.Conv2d)] == [128] * 4
    assert [m.out_channels for m in head.mask_tower if isinstance(m, nn.Conv2d)] == [128] * 4
    assert head.class_logits.out_channels == 2 * 80 and head.box_deltas.out_channels == 2 * 4
    assert [m.out_channels for m in head.mask_predictors] == [11 * 11, 15 * 15]
    assert all(m.kernel_size == (1, 1) for m in head.mask_predictors)
    assert head.mask_fuse is not None and head.aligned and head.bipyramid


def test_parameter_count_is_the_reference_configuration_counted_layer_by_layer():
    # No parameter count is published for TensorMask; this one is counted from detectron2's
    # projects/TensorMask (tensormask/config.py, configs/Base-TensorMask.yaml, arch.py TensorMaskHead):
    # NUM_CONVS 4, CLS_CHANNELS 256, BBOX_CHANNELS 128, MASK_CHANNELS 128, anchors [44, 60] at P2 -> two windows
    # of 11 and 15 cells, 80 classes, ALIGNED_ON + BIPYRAMID_ON (one 3x3 fuse conv), FPN 256 on res2-res5,
    # P6/P7 from res5 (build_retinanet_resnet_fpn_backbone).
    def conv(k: int, c_in: int, c_out: int) -> int:
        return k * k * c_in * c_out + c_out

    heads = (conv(3, 256, 256) * 4 + conv(3, 256, 2 * 80)  # class subnet + score
             + conv(3, 256, 128) + conv(3, 128, 128) * 3 + conv(3, 128, 2 * 4)  # box subnet + deltas
             + conv(3, 256, 128) + conv(3, 128, 128) * 3  # mask subnet
             + conv(1, 128, 11 * 11) + conv(1, 128, 15 * 15) + conv(3, 128, 128))  # mask_pred_11/15, mask_fuse
    fpn = (sum(conv(1, c, 256) for c in (256, 512, 1024, 2048)) + 4 * conv(3, 256, 256)
           + conv(3, 2048, 256) + conv(3, 256, 256))  # laterals, outputs, P6 (from C5), P7
    resnet50_body = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's published ResNet-50 count, less its fc
    assert heads == 4_406_146
    with torch.device("meta"):
        model = pixelseg.create_model("tensormask", num_classes=81)
    assert sum(p.numel() for p in model.head.parameters()) == heads
    assert sum(p.numel() for p in model.backbone.fpn.parameters()) == fpn
    assert sum(p.numel() for p in model.parameters()) == resnet50_body + fpn + heads == 36_567_490


def test_pyramid_is_p2_to_p7_and_the_bipyramid_masks_grow_with_the_level():
    model = TensorMask(4, **{**TINY, "num_levels": 6}).eval()
    features = list(model.backbone(torch.zeros(1, 3, 128, 128)).values())
    assert [tuple(f.shape[-2:]) for f in features] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    light = stride4_pyramid("mobilenet_v3_large", 16, None, num_levels=5).eval()
    assert [tuple(f.shape[-2:]) for f in light(torch.zeros(1, 3, 64, 64)).values()] == [
        (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    model = TensorMask(4, **TINY).eval()
    features = list(model.backbone(torch.zeros(1, 3, 64, 64)).values())
    classes, deltas, masks = model.head(features)
    positions = 16 * 16 + 8 * 8 + 4 * 4
    assert classes.shape == (1, 2 * positions, 3) and deltas.shape == (1, 2 * positions, 4)
    for level, grid in enumerate((16, 8, 4)):
        for index, size in enumerate((7, 11)):
            cells = size * 2 ** level  # 2^k V x 2^k U masks on the H/2^k x W/2^k grid
            assert masks[level][index].shape == (1, cells, cells, grid, grid)
            # each cell is one stride-4 pixel: the window is its mask's cells times 4 pixels wide
            assert model.window_pixels()[level][index] == 4 * cells
    for aligned in (True, False):
        flat = TensorMask(4, **{**TINY, "aligned": aligned, "bipyramid": False}).eval()
        assert flat.head.mask_fuse is None
        _, _, masks = flat.head(features)
        assert [m.shape[1:3] for level in masks for m in level] == [(7, 7), (11, 11)] * 3
    natural = TensorMask(4, **{**TINY, "aligned": False}).eval()
    _, _, masks = natural.head(features)
    assert masks[2][1].shape == (1, 44, 44, 4, 4)


# ---- labels, pasting, focal loss ----------------------------------------------------------------------------------


def test_label_assignment_of_a_hand_worked_box():
    grids, strides = [(32, 32), (16, 16), (8, 8)], [4, 8, 16]
    pixels = [[44.0, 60.0], [88.0, 120.0], [176.0, 240.0]]
    windows = window_boxes(grids, pixels, strides)
    window_strides = torch.cat([torch.full((h * w * 2,), float(s)) for (h, w), s in zip(grids, strides, strict=True)])
    # A 40-pixel box centred at (40, 40). Within one stride (L2) of its centre are the P2 cells centred at 38 or
    # 42 (both windows contain the box; 44 - 4 and 60 - 4 <= 2 x 40) and the P3 cells centred at 36 or 44, where
    # only the 88 window fits (88 - 8 = 80 <= 80; 120 - 8 > 80); P4's windows are too large.
    matched, positive = assign_windows(torch.tensor([[20.0, 20, 60, 60]]), windows, window_strides, 44.0)
    found = sorted((int(window_strides[i]), *windows[i].tolist()) for i in positive.nonzero()[:, 0])
    expected = sorted((4, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
                      for cx in (38.0, 42.0) for cy in (38.0, 42.0) for side in (44.0, 60.0))
    expected += sorted((8, cx - 44, cy - 44, cx + 44, cy + 44) for cx in (36.0, 44.0) for cy in (36.0, 44.0))
    assert found == sorted(expected) and (matched[positive] == 0).all()
    # a box much smaller than every window still gets the smallest one (44 - 4 <= 40), and only that one
    _, positive = assign_windows(torch.tensor([[40.0, 40, 48, 48]]), windows, window_strides, 44.0)
    assert int(positive.sum()) == 4 and ((windows[positive, 2] - windows[positive, 0]) == 44).all()
    # uniqueness: a window that two boxes claim belongs to neither
    _, positive = assign_windows(torch.tensor([[20.0, 20, 60, 60]] * 2), windows, window_strides, 44.0)
    assert not positive.any()
    _, positive = assign_windows(torch.zeros(0, 4), windows, window_strides, 44.0)
    assert not positive.any()


def test_pasting_a_window_is_bilinear_resampling_with_zeros_outside_like_grid_sample():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 5, 5, generator=gen)
    windows = torch.tensor([[2.0, 3.0, 22.0, 13.0], [-6.0, -4.0, 14.0, 16.0], [20.0, 10.0, 35.0, 25.0]])
    pasted = paste_windows(masks, windows, (20, 30))
    xs = (torch.arange(30.0) + 0.5)[None]
    ys = (torch.arange(20.0) + 0.5)[None]
    gx = 2 * (xs - windows[:, 0:1]) / (windows[:, 2:3] - windows[:, 0:1]) - 1  # (3, W)
    gy = 2 * (ys - windows[:, 1:2]) / (windows[:, 3:4] - windows[:, 1:2]) - 1  # (3, H)
    grid = torch.stack([gx[:, None, :].expand(3, 20, 30), gy[:, :, None].expand(3, 20, 30)], -1)
    reference = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    torch.testing.assert_close(pasted, reference)


def test_a_mask_cut_into_its_window_and_pasted_back_is_recovered():
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    disc = ((xs - 30) ** 2 + (ys - 34) ** 2 <= 14 ** 2).float()
    window = torch.tensor([[0.0, 4.0, 60.0, 64.0]])  # 15 cells of 4 pixels, as a 60-pixel P2 window
    cut = roi_align(disc[None, None], torch.cat([torch.zeros(1, 1), window], 1), (15, 15), 1.0, 0, aligned=True)
    back = paste_windows(cut[:, 0].ge(0.5).float(), window, (64, 64))[0] >= 0.5
    iou = (back & disc.bool()).sum() / (back | disc.bool()).sum()
    assert iou > 0.9


def test_focal_loss_star_matches_its_definition_and_is_bce_at_gamma_1():
    logits = torch.tensor([0.0, 2.0])
    targets = torch.tensor([1.0, 0.0])
    expected = 0.3 * math.log(2) / 3 + 0.7 * math.log(1 + math.exp(6)) / 3  # -α_t log σ(γ x_t) / γ
    torch.testing.assert_close(sigmoid_focal_loss_star(logits, targets), torch.tensor(expected))
    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(50, generator=gen), torch.randint(0, 2, (50,), generator=gen).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    torch.testing.assert_close(2 * sigmoid_focal_loss_star(logits, targets, alpha=0.5, gamma=1.0), bce)


# ---- training and inference --------------------------------------------------------------------------------------


def squares_target(boxes: list[list[int]], labels: list[int], size: int = 64) -> dict[str, torch.Tensor]:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
        mask[y1:y2, x1:x2] = 1
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "masks": masks}


def test_a_training_step_gives_finite_losses_and_gradients_to_every_head():
    torch.manual_seed(0)
    # a 20-pixel square for the 7-cell (28-pixel) window and a 40-pixel one for the 11-cell (44-pixel) window
    images = [torch.rand(3, 64, 64)]
    targets = [squares_target([[4, 4, 24, 24], [22, 22, 62, 62]], [1, 3])]
    for aligned in (True, False):
        model = TensorMask(4, **{**TINY, "aligned": aligned}).train()
        losses = model(images, targets)
        assert set(losses) == LOSSES and all(torch.isfinite(v) and v > 0 for v in losses.values())
        sum(losses.values()).backward()
        for name, parameter in model.head.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert model.head.mask_predictors[0].weight.grad.abs().sum() > 0
        assert model.head.mask_predictors[1].weight.grad.abs().sum() > 0


def test_tensormask_losses_decrease_over_a_few_steps_and_eval_returns_torchvision_detections():
    torch.manual_seed(0)
    model = pixelseg.create_model("tensormask", num_classes=4, **TINY)
    outputs = trains_then_detects(model, LOSSES)
    assert len(outputs[0]["boxes"]) > 0 and outputs[0]["masks"].max() > 0.5


def test_an_image_without_objects_gives_finite_losses_and_gradients():
    model = TensorMask(3, **TINY).train()
    losses = model([torch.rand(3, 64, 64)], [empty_detection_target()])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] == 0
    assert model.head.mask_predictors[0].weight.grad is not None


def test_saved_tensormask_reloads_with_identical_detections(tmp_path: Path):
    torch.manual_seed(1)
    model = pixelseg.create_model("tensormask", num_classes=4, class_names=["background", "a", "b", "c"],
                                  **{**TINY, "score_threshold": 0.0})
    assert_reloads_with_identical_detections(model, tmp_path / "model", ["background", "a", "b", "c"])


def test_bad_tensormask_arguments():
    with pytest.raises(PixelsegError, match=r"unknown TensorMask keyword 'window_size' \(did you mean 'window_sizes'"):
        pixelseg.create_model("tensormask", num_classes=3, window_size=[7])
    with pytest.raises(PixelsegError, match="at least 2"):
        TensorMask(1, **TINY)
    with pytest.raises(PixelsegError, match="must be 1-6"):
        TensorMask(3, **{**TINY, "num_levels": 7})
    with pytest.raises(PixelsegError, match="unknown backbone 'vgg'"):
        TensorMask(3, **{**TINY, "backbone": "vgg"})
    with pytest.raises(PixelsegError, match="in_channels=3"):
        pixelseg.create_model("tensormask", num_classes=3, in_channels=1, **TINY)
    with pytest.raises(PixelsegError, match="needs targets"):
        TensorMask(3, **TINY).train()([torch.rand(3, 64, 64)])
