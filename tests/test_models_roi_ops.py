"""Our RoIPool / RoIAlign against torchvision.ops (values and gradients to 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv_ops

from pixelseg.models.modules.roi_ops import RoIAlign, RoIPool, roi_align, roi_pool


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
    ours, our_grad = values_and_gradient(roi_align, features, rois, **kwargs)
    ref, ref_grad = values_and_gradient(tv_ops.roi_align, features, rois, **kwargs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-5)


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
