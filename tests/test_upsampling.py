"""Upsampling operators: values on hand-written inputs, max-unpooling inverts max-pooling, checkerboard."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelseg.errors import PixelsegError
from pixelseg.models.modules.upsampling import UPSAMPLING_KINDS, make_upsample, transposed_overlap_counts

X = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)


def test_nearest_neighbour_copies_each_value_into_a_2x2_block() -> None:
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32)
    assert torch.equal(make_upsample("nearest", 1)(X)[0, 0], expected)


def test_bed_of_nails_puts_each_value_top_left_and_zeros_elsewhere() -> None:
    expected = torch.tensor([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(make_upsample("bed_of_nails", 1)(X)[0, 0], expected)


def test_bed_of_nails_factor_3_and_odd_output_size() -> None:
    out = make_upsample("bed_of_nails", 1, factor=3)(X)[0, 0]
    assert out.shape == (6, 6) and out[0, 0] == 1 and out[0, 3] == 2 and out[3, 0] == 3 and out[3, 3] == 4
    assert out.sum() == 10
    odd = make_upsample("bed_of_nails", 1)(X, output_size=(5, 5))[0, 0]
    assert odd.shape == (5, 5) and odd[2, 2] == 4 and odd.sum() == 10


def test_bilinear_interpolates_between_pixel_centres() -> None:
    # Output pixel centres at input coordinates -0.25, 0.25, 0.75, 1.25 (clamped at the borders).
    expected = torch.tensor([[1.00, 1.25, 1.75, 2.00],
                             [1.50, 1.75, 2.25, 2.50],
                             [2.50, 2.75, 3.25, 3.50],
                             [3.00, 3.25, 3.75, 4.00]])
    assert torch.allclose(make_upsample("bilinear", 1)(X)[0, 0], expected)


def test_max_unpooling_puts_values_back_where_max_pooling_found_them() -> None:
    image = torch.tensor([[1, 5, 0, 2],
                          [3, 0, 7, 1],
                          [0, 9, 4, 4],
                          [8, 1, 2, 6]], dtype=torch.float32).reshape(1, 1, 4, 4)
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(image)
    assert torch.equal(pooled[0, 0], torch.tensor([[5.0, 7.0], [9.0, 6.0]]))
    restored = make_upsample("max_unpool", 1)(pooled, indices)[0, 0]
    expected = torch.tensor([[0, 5, 0, 0], [0, 0, 7, 0], [0, 9, 0, 0], [0, 0, 0, 6]], dtype=torch.float32)
    assert torch.equal(restored, expected)
    # On random maps: the unpooled map is the input where it held the maximum and zero elsewhere.
    features = torch.rand(2, 3, 10, 14) + 0.1  # positive, so that the zeros never win the max
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(features)
    restored = make_upsample("max_unpool", 3)(pooled, indices)
    kept = restored != 0
    assert kept.sum() == pooled.numel()
    assert torch.equal(restored[kept], features[kept])
    assert torch.equal(nn.MaxPool2d(2)(restored), pooled)


def test_max_unpooling_restores_an_odd_size_and_needs_indices() -> None:
    features = torch.randn(1, 2, 7, 9)
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(features)
    up = make_upsample("max_unpool", 2)
    assert up.needs_indices
    assert up(pooled, indices, output_size=(7, 9)).shape == (1, 2, 7, 9)
    with pytest.raises(ValueError, match="indices"):
        up(pooled)


def test_transposed_convolution_with_a_2x2_kernel_places_a_weighted_copy_per_input_pixel() -> None:
    up = make_upsample("transposed", 1, bias=False)
    with torch.no_grad():
        up.conv.weight.copy_(torch.tensor([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    out = up(X)[0, 0]
    expected = torch.tensor([[1, 10, 2, 20], [100, 1000, 200, 2000],
                             [3, 30, 4, 40], [300, 3000, 400, 4000]], dtype=torch.float32)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_transposed_convolution_doubles_the_size_for_any_kernel(kernel_size: int) -> None:
    up = make_upsample("transposed", 4, 6, kernel_size=kernel_size)
    assert up(torch.randn(1, 4, 5, 7)).shape == (1, 6, 10, 14)


def test_resize_conv_is_nearest_upsampling_then_a_3x3_convolution() -> None:
    up = make_upsample("resize_conv", 1, bias=False)
    assert up.conv.kernel_size == (3, 3)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.weight[0, 0, 1, 1] = 1.0  # identity kernel: the result is the nearest-neighbour image
    assert torch.equal(up(X), make_upsample("nearest", 1)(X))
    with torch.no_grad():
        up.conv.weight.fill_(1.0)  # 3x3 box sum of the nearest image (zero padded)
    out = up(X)[0, 0]
    assert out[1, 1] == 1 * 4 + 2 * 2 + 3 * 2 + 4 * 1
    assert out[0, 0] == 1 * 4


def test_checkerboard_cause_stride_2_3x3_overlaps_unevenly_4x4_evenly() -> None:
    counts3 = transposed_overlap_counts(3, 2, 6)
    interior3 = counts3[2:-2, 2:-2]
    assert set(interior3.unique().tolist()) == {1.0, 2.0, 4.0}
    assert interior3[0, 0] == 4 and interior3[0, 1] == 2 and interior3[1, 1] == 1
    counts4 = transposed_overlap_counts(4, 2, 6)
    assert set(counts4[2:-2, 2:-2].unique().tolist()) == {4.0}
    # The same counts by hand: output pixel o is reached by inputs i with 0 <= o - 2i < kernel.
    for kernel, counts in ((3, counts3), (4, counts4)):
        per_axis = [sum(0 <= o - 2 * i < kernel for i in range(6)) for o in range(counts.shape[0])]
        assert counts.tolist() == [[a * b for b in per_axis] for a in per_axis]


@pytest.mark.parametrize("kind", UPSAMPLING_KINDS)
def test_every_operator_changes_width_and_doubles_size(kind: str) -> None:
    x = torch.randn(2, 4, 3, 5)
    up = make_upsample(kind, 4, 8)
    indices = None
    if up.needs_indices:
        x, indices = nn.MaxPool2d(2, return_indices=True)(torch.randn(2, 4, 6, 10))
    y = up(x, indices)
    assert y.shape == (2, 8, 6, 10)
    assert make_upsample(kind, 4)(x, indices).shape == (2, 4, 6, 10)


def test_unknown_upsampling_name_suggests_the_closest() -> None:
    with pytest.raises(PixelsegError, match="did you mean 'bilinear'"):
        make_upsample("bilinar", 4)


# ---- volumes (dims=3): V-Net's decoder and any 3D decoder ---------------------------------------------

V = torch.arange(1.0, 9.0).reshape(1, 1, 2, 2, 2)


def test_3d_nearest_and_bed_of_nails_fill_factor_cubes() -> None:
    nearest = make_upsample("nearest", 1, dims=3)(V)
    assert nearest.shape == (1, 1, 4, 4, 4)
    assert torch.equal(nearest[0, 0, 2:4, 0:2, 2:4], torch.full((2, 2, 2), 6.0))  # V[1, 0, 1] = 6
    nails = make_upsample("bed_of_nails", 1, dims=3)(V)
    assert torch.equal(nails[0, 0, ::2, ::2, ::2], V[0, 0]) and nails.sum() == V.sum()
    odd = make_upsample("bed_of_nails", 1, factor=3, dims=3)(V, output_size=(4, 5, 6))
    assert odd.shape == (1, 1, 4, 5, 6) and odd[0, 0, 3, 3, 3] == 8 and odd.sum() == V.sum()


def test_3d_bilinear_is_trilinear_interpolation() -> None:
    out = make_upsample("bilinear", 1, dims=3)(V)
    expected = torch.nn.functional.interpolate(V, scale_factor=2, mode="trilinear", align_corners=False)
    assert torch.equal(out, expected)
    assert not torch.equal(out, torch.nn.functional.interpolate(V, scale_factor=2, mode="nearest"))


def test_3d_max_unpooling_inverts_3d_max_pooling_at_odd_sizes() -> None:
    volume = torch.randn(2, 3, 5, 7, 9)
    pooled, indices = nn.functional.max_pool3d(volume, 2, 2, return_indices=True)
    out = make_upsample("max_unpool", 3, dims=3)(pooled, indices, output_size=volume.shape[-3:])
    assert out.shape == volume.shape
    kept = out != 0
    assert torch.equal(out[kept], volume[kept]) and int(kept.sum()) == pooled.numel()


@pytest.mark.parametrize("kind", UPSAMPLING_KINDS)
def test_every_operator_in_3d_changes_width_and_doubles_size(kind: str) -> None:
    up = make_upsample(kind, 4, 6, dims=3)
    volume = torch.randn(1, 4, 6, 8, 10)
    indices = None
    if kind == "max_unpool":
        volume, indices = nn.functional.max_pool3d(torch.randn(1, 4, 12, 16, 20), 2, 2, return_indices=True)
    assert up(volume, indices).shape == (1, 6, 12, 16, 20)
    assert up(volume, indices, output_size=(13, 17, 21) if kind != "max_unpool" else (12, 17, 21)).shape[-3:] \
        == ((13, 17, 21) if kind != "max_unpool" else (12, 17, 21))
    with pytest.raises(ValueError, match="3D upsampling takes"):
        up(torch.randn(1, 4, 6, 8))


@pytest.mark.parametrize("kind", ["nearest", "bed_of_nails", "bilinear", "resize_conv"])
def test_unet_and_vnet_decoders_take_any_upsampling(kind: str) -> None:
    from pixelseg import create_model

    unet = create_model("unet", num_classes=3, in_channels=1, base_channels=4, depth=2, padding="same",
                        upsampling=kind)
    assert all(type(up.up).__name__ != "ConvTranspose2d" for up in unet.ups)
    assert unet(torch.randn(1, 1, 37, 53)).shape == (1, 3, 37, 53)
    vnet = create_model("vnet", num_classes=2, in_channels=1, channels=(2, 4, 8), down_convs=(1, 1, 1), up_convs=(1, 1),
                        upsampling=kind)
    assert vnet(torch.randn(1, 1, 5, 9, 7)).shape == (1, 2, 5, 9, 7)


def test_pooling_free_decoders_refuse_max_unpooling() -> None:
    from pixelseg import create_model

    for name, kwargs in (("unet", {"depth": 2}), ("vnet", {"channels": (2, 4, 8), "down_convs": (1, 1, 1),
                                                           "up_convs": (1, 1)})):
        with pytest.raises(ValueError, match="max-unpool|max-pooling indices"):
            create_model(name, num_classes=2, upsampling="max_unpool", **kwargs)
