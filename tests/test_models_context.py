"""Shared context blocks: ASPP (summed and concatenated), pyramid pooling, separable convs, JPU."""

from __future__ import annotations

import torch
from helpers import parameter_count
from torch import nn

from pixelseg.models.modules.context import (
    AtrousSpatialPyramidPooling,
    ClassifierHead,
    DepthwiseSeparableConv,
    ImagePooling,
    JointPyramidUpsampling,
    PyramidPoolingModule,
    SummedAtrousPyramid,
)


def copy_weights_in_order(target: nn.Module, source: nn.Module) -> None:
    """Load ``source``'s state into ``target`` by position; every shape must agree."""
    pairs = list(zip(target.state_dict().items(), source.state_dict().values(), strict=True))
    for (name, mine), theirs in pairs:
        assert mine.shape == theirs.shape, name
    target.load_state_dict({name: theirs for (name, _), theirs in pairs})


def test_concatenated_aspp_equals_torchvision_aspp_given_the_same_weights() -> None:
    from torchvision.models.segmentation.deeplabv3 import ASPP

    reference = ASPP(32, [2, 4, 6], out_channels=16).eval()
    mine = AtrousSpatialPyramidPooling(32, 16, (2, 4, 6)).eval()
    assert parameter_count(mine) == parameter_count(reference)
    copy_weights_in_order(mine, reference)
    x = torch.randn(2, 32, 9, 11)
    with torch.no_grad():
        assert torch.allclose(mine(x), reference(x), atol=1e-6)


def test_concatenated_aspp_has_1x1_three_atrous_and_image_pooling_branches() -> None:
    aspp = AtrousSpatialPyramidPooling(64, 8, (6, 12, 18))
    assert len(aspp.branches) == 5
    assert aspp.branches[0][0].kernel_size == (1, 1)
    assert [branch[0].dilation for branch in aspp.branches[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert isinstance(aspp.branches[4], ImagePooling)
    assert aspp.fuse[0][0].in_channels == 5 * 8
    without_pooling = AtrousSpatialPyramidPooling(64, 8, (6, 12, 18), image_pooling=False)
    assert len(without_pooling.branches) == 4 and without_pooling.fuse[0][0].in_channels == 4 * 8


def test_image_pooling_branch_is_the_same_at_every_position() -> None:
    pooling = ImagePooling(8, 4).eval()
    with torch.no_grad():
        out = pooling(torch.randn(1, 8, 7, 9))
    assert out.shape == (1, 4, 7, 9)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out))


def test_summed_aspp_output_is_the_sum_of_its_dilated_branches() -> None:
    aspp = SummedAtrousPyramid(16, 3, (6, 12, 18, 24))
    assert [branch.dilation for branch in aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.randn(1, 16, 10, 12)
    with torch.no_grad():
        expected = sum(nn.functional.conv2d(x, b.weight, b.bias, padding=r, dilation=r)
                       for b, r in zip(aspp.branches, (6, 12, 18, 24), strict=True))
        assert torch.allclose(aspp(x), expected, atol=1e-5)
    assert parameter_count(aspp) == 4 * (16 * 9 * 3 + 3)


def test_separable_conv_without_inner_norm_equals_smp_separable_conv_and_batch_norm() -> None:
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import SeparableConv2d

    reference = nn.Sequential(SeparableConv2d(12, 20, 3, padding=2, dilation=2, bias=False),
                              nn.BatchNorm2d(20), nn.ReLU()).eval()
    mine = DepthwiseSeparableConv(12, 20, 3, dilation=2, between="none").eval()
    copy_weights_in_order(mine, reference)
    x = torch.randn(2, 12, 8, 9)
    with torch.no_grad():
        assert torch.allclose(mine(x), reference(x), atol=1e-6)


def test_separable_conv_is_depthwise_then_pointwise_and_cheaper_than_a_dense_conv() -> None:
    conv = DepthwiseSeparableConv(64, 128, 3, dilation=4)
    depthwise, pointwise = conv[0], conv[3]
    assert depthwise.groups == 64 and depthwise.dilation == (4, 4) and pointwise.kernel_size == (1, 1)
    assert parameter_count(conv) == 64 * 9 + 2 * 64 + 64 * 128 + 2 * 128
    assert parameter_count(conv) < 64 * 128 * 9 / 8
    assert torch.randn(1, 64, 9, 7).shape[-2:] == conv(torch.randn(1, 64, 9, 7)).shape[-2:]


def test_pyramid_pooling_concatenates_bins_1_2_3_6_at_a_quarter_of_the_channels() -> None:
    ppm = PyramidPoolingModule(32).eval()
    assert ppm.bins == (1, 2, 3, 6)
    assert [stage[0].out_channels for stage in ppm.stages] == [8, 8, 8, 8]
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        out = ppm(x)
    assert out.shape == (1, 64, 12, 12) and ppm.out_channels == 64
    assert torch.equal(out[:, :32], x)  # the features themselves pass through
    global_level = out[:, 32:40]
    assert torch.allclose(global_level, global_level[..., :1, :1].expand_as(global_level))
    assert not torch.allclose(out[:, 56:64], out[:, 56:64, :1, :1].expand_as(out[:, 56:64]))


def test_jpu_brings_strides_8_16_32_to_stride_8_with_separable_dilations_1_2_4_8() -> None:
    jpu = JointPyramidUpsampling((16, 32, 64), width=8).eval()
    assert [branch[0].dilation for branch in jpu.dilated] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert all(branch[0].groups == 24 for branch in jpu.dilated)  # depthwise over the 3 x 8 joint channels
    features = [torch.randn(2, 16, 13, 17), torch.randn(2, 32, 7, 9), torch.randn(2, 64, 4, 5)]
    with torch.no_grad():
        assert jpu(features).shape == (2, 32, 13, 17)
    # reduce: three 3x3 conv-BN; each branch: depthwise 3x3 + BN + pointwise + BN
    expected = sum(c * 8 * 9 + 16 for c in (16, 32, 64)) + 4 * (24 * 9 + 48 + 24 * 8 + 16)
    assert parameter_count(jpu) == expected


def test_classifier_head_is_conv_bn_relu_dropout_and_1x1() -> None:
    head = ClassifierHead(16, 5, hidden_channels=8)
    assert head[0][0].kernel_size == (3, 3) and isinstance(head[1], nn.Dropout2d)
    assert head[2].out_channels == 5 and head(torch.randn(2, 16, 5, 6)).shape == (2, 5, 5, 6)
