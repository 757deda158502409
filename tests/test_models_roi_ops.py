"""Our RoIPool / RoIAlign against torchvision.ops (values and gradients to 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv_ops
from torchvision.ops import MultiScaleRoIAlign

from pixelseg.errors import PixelsegError
from pixelseg.models.modules import roi_ops
from pixelseg.models.modules.roi_ops import MultiLevelRoIAlign, RoIAlign, RoIPool, roi_align, roi_pool


def random_case(seed: int, batch: int = 2, channels: int = 3, height: int = 13, width: int = 17,
                num_boxes: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random maps and boxes, many of them reaching past the border or lying fully outside it."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=gen)
    size = torch.tensor([width, height], dtype=torch.float32)
    corner = torch.rand(num_boxes, 2, generator=gen) * size * 1.6 - size * 0.3
    extent = torch.rand(num_boxes, 2, generator=gen) * size
    extent[:3] = 0.0  # degenerate boxes of zero width and height
    batch_index = torch.randint(0, batch, (num_boxes, 1), generator=gen).float()
    return features, torch.cat([batch_index, corner, corner + extent], dim=1)


def values_and_gradient(op, features: torch.Tensor, rois: torch.Tensor, **kwargs):
    leaf = features.clone().requires_grad_(True)
    out = op(leaf, rois, **kwargs)
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_equals_torchvision_in_values_and_gradients(seed, sampling_ratio, aligned):
    features, rois = random_case(seed)
    scale = [1.0, 0.5, 0.25, 0.125][seed]
    rois[:, 1:] /= scale
    kwargs = dict(output_size=(5, 4), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    # float64: the same arithmetic, so the two agree to rounding
    ours64, our_grad64 = values_and_gradient(roi_align, features.double(), rois.double(), **kwargs)
    ref64, ref_grad64 = values_and_gradient(tv_ops.roi_align, features.double(), rois.double(), **kwargs)
    torch.testing.assert_close(ours64, ref64, rtol=0, atol=1e-10)
    torch.testing.assert_close(our_grad64, ref_grad64, rtol=0, atol=1e-10)
    # float32: values to 1e-5; gradients (sums of many terms, up to ~10 here) to 1e-5 of the exact ones
    # and to a relative 1e-5 of torchvision's, whose float32 rounding differs from ours
    ours, our_grad = values_and_gradient(roi_align, features, rois, **kwargs)
    ref, ref_grad = values_and_gradient(tv_ops.roi_align, features, rois, **kwargs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad64.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad, rtol=1e-5, atol=1e-5)
    # without autograd (the inference path, which pools a few RoIs at a time in place)
    with torch.inference_mode():
        torch.testing.assert_close(roi_align(features, rois, **kwargs), ref, rtol=0, atol=1e-5)


BORDER_BOXES = torch.tensor([
    [0, -3.0, -2.0, 6.0, 5.0],  # reaching past the top-left corner
    [0, 10.0, 8.0, 19.0, 15.0],  # past the bottom-right corner (the map is 17 x 13)
    [0, -0.8, 2.0, 4.0, 14.2],  # within the one-pixel margin, where samples read the border
    [0, -9.0, -9.0, -2.5, -1.5],  # entirely outside, beyond the margin: zeros
    [0, 20.0, 3.0, 30.0, 9.0],  # right of the map
    [0, 5.0, 5.0, 5.0, 9.0],  # zero width
    [0, 3.0, 7.0, 11.0, 7.0],  # zero height
    [0, 6.0, 6.0, 6.0, 6.0],  # a point
    [0, 9.0, 9.0, 4.0, 2.0],  # inverted (x2 < x1, y2 < y1)
    [0, 16.0, 12.0, 16.9, 12.9],  # the last pixel
])


@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("aligned", [False, True])
def test_boxes_past_the_border_empty_and_inverted_like_torchvision(sampling_ratio, aligned):
    features = torch.randn(1, 3, 13, 17, generator=torch.Generator().manual_seed(5))
    kwargs = dict(output_size=(3, 4), spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=aligned)
    ours, our_grad = values_and_gradient(roi_align, features.double(), BORDER_BOXES.double(), **kwargs)
    ref, ref_grad = values_and_gradient(tv_ops.roi_align, features.double(), BORDER_BOXES.double(), **kwargs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-10)
    assert ours[3].abs().max() == 0  # beyond the margin nothing is read
    torch.testing.assert_close(roi_align(features, BORDER_BOXES, **kwargs),
                               tv_ops.roi_align(features, BORDER_BOXES, **kwargs), rtol=0, atol=1e-5)


def test_samples_exactly_on_the_one_pixel_margin_read_the_border_like_torchvision():
    # One bin, one sample at the box centre. The map holds 0..24; beyond the border samples within one
    # pixel read the border pixel, further out they read nothing; exactly at the margin they still read.
    feature_map = torch.arange(25.0).view(1, 1, 5, 5)
    boxes = torch.tensor([
        [0, 4.0, 4.0, 6.0, 6.0],  # centre (5, 5): one pixel past the last centre -> pixel (4, 4) = 24
        [0, -2.0, -2.0, 0.0, 0.0],  # centre (-1, -1): exactly on the margin -> pixel (0, 0) = 0 ... and
        [0, -2.0, 1.0, 0.0, 3.0],  # centre (-1, 2) -> pixel (2, 0) = 10
        [0, 4.0, 1.0, 6.002, 3.0],  # centre x = 5.001: past the margin -> nothing
    ])
    ours = roi_align(feature_map, boxes, 1, spatial_scale=1.0, sampling_ratio=1)
    assert ours.flatten().tolist() == [24.0, 0.0, 10.0, 0.0]
    torch.testing.assert_close(ours, tv_ops.roi_align(feature_map, boxes, 1, 1.0, 1))


def test_gradient_equals_finite_differences():
    features, rois = random_case(1, batch=2, channels=2, height=6, width=7, num_boxes=5)
    rois[:, 1:] *= 0.5  # a map of 6 x 7 pixels
    leaf = features.double().requires_grad_(True)
    for aligned in (False, True):
        assert torch.autograd.gradcheck(lambda x, a=aligned: roi_align(x, rois.double(), 3, 1.0, 2, a), (leaf,))


def pyramid_case(seed: int) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    """A four-level pyramid (strides 4-32) of a batch of two 256 x 320 images, boxes of every size."""
    gen = torch.Generator().manual_seed(seed)
    levels = {str(k): torch.randn(2, 6, 64 >> k, 80 >> k, generator=gen) for k in range(4)}
    boxes = []
    for count in (40, 25):
        side = 2 ** (torch.rand(count, 2, generator=gen) * 7 + 2)  # 4 to 512 pixels
        corner = torch.rand(count, 2, generator=gen) * torch.tensor([320.0, 256.0]) - side / 3
        large = torch.tensor([[-40.0, -30.0, 430.0, 450.0]])  # the coarsest level's (and larger than the image)
        boxes.append(torch.cat([torch.cat([corner, corner + side], dim=1), large]))
    return levels, boxes, [(256, 320), (240, 300)]


@pytest.mark.parametrize("output_size", [7, 14])
def test_pyramid_pooler_equals_torchvision_multi_scale_roi_align(output_size):
    levels, boxes, image_sizes = pyramid_case(output_size)
    ours = MultiLevelRoIAlign(["0", "1", "2", "3"], output_size, sampling_ratio=2)
    reference = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, sampling_ratio=2)
    side = torch.cat([(b[:, 2:] - b[:, :2]).prod(dim=1).sqrt() for b in boxes])
    assert len(torch.unique(torch.floor(4 + torch.log2(side / 224) + 1e-6).clamp(2, 5))) == 4  # all levels read
    results = []
    for pooler in (ours, reference):
        leaves = {name: level.double().requires_grad_(True) for name, level in levels.items()}
        out = pooler(leaves, [b.double() for b in boxes], image_sizes)
        out.backward(torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out))
        results.append((out.detach(), [leaf.grad for leaf in leaves.values()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-10)
    for our_grad, ref_grad in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-10)
    with torch.inference_mode():
        torch.testing.assert_close(ours(levels, boxes, image_sizes), reference(levels, boxes, image_sizes),
                                   rtol=0, atol=1e-5)


def test_detector_sized_map_with_256_channels_agrees_to_1e5():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 256, 50, 68, generator=gen)
    corner = torch.rand(300, 2, generator=gen) * torch.tensor([1088.0, 800.0])
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=gen).float(), corner,
                      corner + torch.rand(300, 2, generator=gen) * 300 + 4], dim=1)
    for kwargs in (dict(output_size=7, sampling_ratio=2), dict(output_size=14, sampling_ratio=-1, aligned=True)):
        with torch.inference_mode():
            ours = roi_align(features, rois, spatial_scale=1 / 16, **kwargs)
            ref = tv_ops.roi_align(features, rois, spatial_scale=1 / 16, **kwargs)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_pooling_in_chunks_and_from_a_channels_last_map_changes_nothing(monkeypatch):
    features, rois = random_case(2, channels=4, num_boxes=30)
    kwargs = dict(output_size=(4, 3), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    ref, ref_grad = values_and_gradient(tv_ops.roi_align, features.double(), rois.double(), **kwargs)
    monkeypatch.setattr(roi_ops, "_TAP_BUDGET", 100)  # a few RoIs per chunk
    monkeypatch.setattr(roi_ops, "_OUTPUT_PIECE", 40)  # one RoI at a time without autograd
    ours, our_grad = values_and_gradient(roi_align, features.double(), rois.double(), **kwargs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(roi_align(features.double(), rois.double(), **kwargs), ref, rtol=0, atol=1e-10)
    monkeypatch.undo()
    # a channels-last map (like a one-channel one) is read in place, without a table
    channels_last = features.double().contiguous(memory_format=torch.channels_last)
    ours, our_grad = values_and_gradient(roi_align, channels_last, rois.double(), **kwargs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(roi_align(channels_last, rois.double(), **kwargs), ref, rtol=0, atol=1e-10)
    one_channel = features[:, :1].double()
    torch.testing.assert_close(roi_align(one_channel, rois.double(), **kwargs),
                               tv_ops.roi_align(one_channel, rois.double(), **kwargs), rtol=0, atol=1e-10)


def test_batch_index_beyond_the_batch_is_a_clear_error():
    features = torch.randn(2, 3, 8, 8)
    with pytest.raises(PixelsegError, match=r"batch indices must lie in \[0, 1\].*got 0\.\.2"):
        roi_align(features, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0], [2, 1.0, 1.0, 4.0, 4.0]]), 2)


@pytest.mark.parametrize("seed", range(6))
def test_roi_pool_equals_torchvision_in_values_and_gradients(seed):
    features, rois = random_case(seed)
    scale = [1.0, 0.5, 0.25][seed % 3]
    rois[:, 1:] /= scale
    ours, our_grad = values_and_gradient(roi_pool, features, rois, output_size=(3, 4), spatial_scale=scale)
    ref, ref_grad = values_and_gradient(tv_ops.roi_pool, features, rois, output_size=(3, 4),
                                        spatial_scale=scale)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-5)


def test_roi_pool_bins_of_more_than_255_pixels_send_the_gradient_to_their_maximum():
    # One 1x1 bin over a 24x24 window: 576 reads per bin, past the uint8 slot counter of the argmax.
    features = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    rois = torch.tensor([[1, 0.0, 0.0, 23.0, 23.0], [0, 2.0, 3.0, 20.0, 22.0]])
    ours, our_grad = values_and_gradient(roi_pool, features, rois, output_size=1)
    ref, ref_grad = values_and_gradient(tv_ops.roi_pool, features, rois, output_size=1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=0)
    assert int((our_grad != 0).sum()) == 6  # one input per bin and channel


def test_roi_pool_rounds_half_pixel_boxes_away_from_zero_like_torchvision():
    features = torch.arange(64.0).view(1, 1, 8, 8)
    rois = torch.tensor([[0, 0.5, 1.5, 2.5, 4.5], [0, 2.5, 0.5, 6.5, 3.5]])
    torch.testing.assert_close(roi_pool(features, rois, 2), tv_ops.roi_pool(features, rois, 2))


def test_list_of_boxes_per_image_equals_the_batch_index_format():
    features, _ = random_case(0)
    per_image = [torch.tensor([[1.0, 2.0, 9.0, 7.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0], [3, 3, 16, 12.0]])]
    with_index = torch.tensor([[0, 1.0, 2.0, 9.0, 7.0], [1, 0, 0, 4, 4], [1, 3, 3, 16, 12]])
    torch.testing.assert_close(roi_align(features, per_image, 3, 1.0, 2), roi_align(features, with_index, 3, 1.0, 2))
    torch.testing.assert_close(roi_align(features, per_image, 3, 1.0, 2),
                               tv_ops.roi_align(features, per_image, 3, 1.0, 2))
    torch.testing.assert_close(roi_pool(features, per_image, 3), tv_ops.roi_pool(features, per_image, 3))


def test_worked_example_aligned_and_unaligned_differ_by_the_half_pixel_shift():
    # The map holds 0..24, so the value at continuous position (y, x) is 5 * y + x wherever bilinear
    # interpolation is exact. Box [1, 1, 3, 3], a 2x2 output, one sample per bin (at the bin centre).
    feature_map = torch.arange(25.0).view(1, 1, 5, 5)
    box = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    # Unaligned: bins of 1 pixel start at 1, their centres lie at 1.5 and 2.5 -> 5*1.5 + 1.5 = 9 ...
    unaligned = roi_align(feature_map, box, 2, spatial_scale=1.0, sampling_ratio=1, aligned=False)
    assert unaligned[0, 0].tolist() == [[9.0, 10.0], [14.0, 15.0]]
    # Aligned: the box is shifted by -0.5 (pixel centres sit at integer + 0.5), centres at 1.0 and 2.0.
    aligned = roi_align(feature_map, box, 2, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    assert aligned[0, 0].tolist() == [[6.0, 7.0], [11.0, 12.0]]
    # The difference is exactly half a pixel in x (0.5) plus half a pixel in y (0.5 * 5).
    assert torch.all(unaligned - aligned == 3.0)
    for flag in (False, True):
        torch.testing.assert_close(roi_align(feature_map, box, 2, 1.0, 1, flag),
                                   tv_ops.roi_align(feature_map, box, 2, 1.0, 1, flag))


def test_adaptive_sampling_uses_a_grid_per_box():
    # A box 12 pixels wide pooled to 2 bins samples ceil(12 / 2) = 6 points per bin; one 2 pixels wide, 1.
    features = torch.randn(1, 2, 20, 20)
    rois = torch.tensor([[0, 1.0, 1.0, 13.0, 13.0], [0, 4.0, 4.0, 6.0, 6.0]])
    torch.testing.assert_close(roi_align(features, rois, 2, 1.0, -1),
                               torch.cat([roi_align(features, rois[:1], 2, 1.0, 6),
                                          roi_align(features, rois[1:], 2, 1.0, 1)]))


def test_modules_and_empty_box_sets():
    features = torch.randn(1, 4, 8, 8)
    empty = torch.zeros(0, 5)
    assert RoIAlign(7, 0.25, 2)(features, empty).shape == (0, 4, 7, 7)
    assert RoIPool((2, 3), 1.0)(features, empty).shape == (0, 4, 2, 3)
    with pytest.raises(ValueError, match="shape"):
        roi_align(features, torch.zeros(3, 4), 2)
