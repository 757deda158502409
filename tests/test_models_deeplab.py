"""DeepLab v1/v2/v3/v3+, PSPNet and FastFCN: structure and parameter counts against the papers and the
reference implementations (torchvision, smp), odd sizes, save/load, encoder weights, training."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from helpers import losses_over_steps, parameter_count
from torch import nn

import pixelseg
from pixelseg.errors import PixelsegError
from pixelseg.models.base import SegmentationOutput
from pixelseg.models.modules.context import DepthwiseSeparableConv

# timm's tiny ResNet (one BasicBlock per stage, 0.5M parameters) keeps the shape and training tests fast
# on a shared 2-core CPU; the structure tests build the papers' backbones on the meta device.
SMALL = {"encoder": "test_resnet"}
ALL_MODELS = [
    ("deeplabv1", {"fc_channels": 64}),
    ("deeplabv2", SMALL),
    ("deeplabv3", SMALL),
    ("deeplabv3plus", SMALL),
    ("deeplabv3plus", {"encoder": "test_resnet", "separable": False, "output_stride": 8}),
    ("pspnet", SMALL),
    ("fastfcn", {"encoder": "test_resnet", "jpu_width": 64}),
    ("fastfcn", {"encoder": "test_resnet", "jpu_width": 64, "head": "psp", "aux_weight": 0.2}),
]
BACKBONE_MODELS = ["deeplabv2", "deeplabv3", "deeplabv3plus", "pspnet", "fastfcn"]


def count_on_meta(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return parameter_count(pixelseg.create_model(name, **kwargs))


def timm_backbone_count(name: str) -> int:
    """Parameters of a timm classifier without its fc layer (the part a segmentation encoder keeps)."""
    with torch.device("meta"):
        model = timm.create_model(name)
    return parameter_count(model) - parameter_count(model.get_classifier())


@pytest.mark.parametrize("name,kwargs", ALL_MODELS)
def test_models_are_registered_and_keep_odd_input_sizes(name: str, kwargs: dict) -> None:
    assert name in pixelseg.list_models()
    model = pixelseg.create_model(name, num_classes=5, in_channels=2, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 37, 53)).shape == (1, 5, 37, 53)


# --- DeepLab v1 --------------------------------------------------------------------------------------

def test_deeplabv1_largefov_has_20_5m_parameters_like_table_2_of_the_paper() -> None:
    count = count_on_meta("deeplabv1", num_classes=21)
    assert abs(count - 20.5e6) / 20.5e6 < 0.005
    vgg16_convs = 14_714_688  # VGG16's 13 convolutions
    assert count == vgg16_convs + (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)


def test_deeplabv1_keeps_stride_8_with_pool4_pool5_at_stride_1_and_atrous_fc6() -> None:
    model = pixelseg.create_model("deeplabv1", num_classes=3).eval()
    pools = [m for m in model.encoder.modules() if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    conv5 = [m for m in model.encoder.stages[4].modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.dilation == (2, 2) for conv in conv5)
    fc6 = model.fc6[0]
    assert fc6.kernel_size == (3, 3) and fc6.dilation == (12, 12) and fc6.out_channels == 1024
    assert model.fc7[0].kernel_size == (1, 1) and model.fc7[0].out_channels == 1024
    with torch.no_grad():
        # Caffe's rounding, as in the paper's nets: 8k + 1 pixels give k + 1 outputs (321 -> 41)
        assert model.encoder(torch.randn(1, 3, 65, 97))[-1].pooled.shape == (1, 512, 9, 13)


@pytest.mark.parametrize("name,kwargs", [("deeplabv1", {"fc_channels": 16}), ("deeplabv2", SMALL)])
def test_refiner_post_processes_logits_in_eval_mode_only(name: str, kwargs: dict) -> None:
    model = pixelseg.create_model(name, num_classes=3, **kwargs)
    calls: list[tuple[int, ...]] = []

    def refiner(image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(image.shape))
        return torch.zeros_like(logits)

    model.set_refiner(refiner)
    x = torch.randn(1, 3, 33, 41)
    model.train()
    assert model(x).abs().sum() > 0 and not calls
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(1, 3, 33, 41))
    assert calls == [(1, 3, 33, 41)]


def test_deeplabv1_dense_crf_refiner_snaps_noisy_scores_to_the_image_regions() -> None:
    from pixelseg.refiners.dense_crf import IMAGENET_MEAN, IMAGENET_STD, DenseCRFRefiner

    height, width = 40, 48
    truth = torch.zeros(height, width, dtype=torch.long)
    truth[:, 20:] = 1
    rgb = torch.where(truth.bool(), 0.9, 0.1).expand(3, height, width)  # dark left, bright right
    image = ((rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]
    generator = torch.Generator().manual_seed(0)
    flipped = torch.rand(height, width, generator=generator) < 0.2
    noisy = torch.where(flipped, 1 - truth, truth)
    logits = torch.nn.functional.one_hot(noisy, 2).permute(2, 0, 1).float()[None] * 0.8
    refined = DenseCRFRefiner()(image, logits)
    assert refined.shape == logits.shape
    before = (logits.argmax(1)[0] == truth).float().mean()
    after = (refined.argmax(1)[0] == truth).float().mean()
    assert before < 0.85 and after > 0.99

    model = pixelseg.create_model("deeplabv1", num_classes=2, fc_channels=16).eval()
    model.set_refiner(DenseCRFRefiner())
    with torch.no_grad():
        assert model(image).shape == (1, 2, height, width)


def test_deeplabv1_decimates_vgg16_fc_layers_from_a_local_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = timm.create_model("vgg16")
    save_file(reference.state_dict(), tmp_path / "vgg16.safetensors")
    model = pixelseg.create_model("deeplabv1", num_classes=2,
                                  encoder_weights=str(tmp_path / "vgg16.safetensors"))
    assert torch.equal(model.encoder.stages[4][2][0].weight, reference.features[28].weight)
    fc1 = reference.pre_logits.fc1.weight  # (4096, 512, 7, 7): every 4th filter, taps 0, 3, 6
    assert torch.equal(model.fc6[0].weight[5, :, 1, 2], fc1[20, :, 3, 6])
    assert torch.equal(model.fc7[0].weight[7, 3], reference.pre_logits.fc2.weight[28, 12])


# --- DeepLab v2 --------------------------------------------------------------------------------------

def test_deeplabv2_is_resnet101_plus_four_summed_class_branches() -> None:
    count = count_on_meta("deeplabv2", num_classes=21)
    assert count == timm_backbone_count("resnet101") + 4 * (2048 * 9 * 21 + 21)
    with torch.device("meta"):
        model = pixelseg.create_model("deeplabv2", num_classes=21)
    assert model.encoder.reductions[-1] == 8
    assert [b.dilation for b in model.aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]


def test_deeplabv2_logits_are_the_upsampled_sum_of_the_branch_scores() -> None:
    model = pixelseg.create_model("deeplabv2", num_classes=4, encoder="test_resnet").eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        features = model.encoder(x)[-1]
        assert features.shape[-2:] == (5, 6)  # output stride 8
        summed = sum(branch(features) for branch in model.aspp.branches)
        expected = nn.functional.interpolate(summed, size=(40, 48), mode="bilinear", align_corners=False)
        assert torch.allclose(model(x), expected, atol=1e-5)


# --- DeepLab v3 --------------------------------------------------------------------------------------

def test_deeplabv3_resnet50_has_exactly_the_parameters_of_torchvision_deeplabv3_resnet50() -> None:
    from torchvision.models.segmentation import deeplabv3_resnet50

    with torch.device("meta"):
        reference = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)
    count = count_on_meta("deeplabv3", num_classes=21, encoder="resnet50")
    assert count == parameter_count(reference) == 39_638_869


def test_deeplabv3_resnet50_has_the_parameters_of_smp_deeplabv3_too() -> None:
    import segmentation_models_pytorch as smp

    with torch.device("meta"):
        reference = smp.DeepLabV3("resnet50", encoder_weights=None, classes=21)
    assert count_on_meta("deeplabv3", num_classes=21, encoder="resnet50") == parameter_count(reference)


def test_deeplabv3_computes_what_torchvision_computes_given_its_weights() -> None:
    from torchvision.models.segmentation import deeplabv3_resnet50

    reference = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=3).eval()
    # torchvision's configuration: output stride 8 (rates 12, 24, 36), no multi-grid.
    model = pixelseg.create_model("deeplabv3", num_classes=3, encoder="resnet50", output_stride=8,
                                  multi_grid=None).eval()
    pairs = list(zip(model.state_dict().items(), reference.state_dict().values(), strict=True))
    assert all(mine.shape == theirs.shape for (_, mine), theirs in pairs)
    model.load_state_dict({name: theirs for (name, _), theirs in pairs})
    x = torch.randn(1, 3, 33, 37)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x)["out"], atol=1e-4)


def test_deeplabv3_multi_grid_1_2_4_in_the_last_stage_and_rates_doubling_at_stride_8() -> None:
    for output_stride, stage_rate, rates in [(16, 2, (6, 12, 18)), (8, 4, (12, 24, 36))]:
        with torch.device("meta"):
            model = pixelseg.create_model("deeplabv3", num_classes=21, output_stride=output_stride)
        last_stage = model.encoder.body.layer4
        assert [block.conv2.dilation[0] for block in last_stage] == [stage_rate * u for u in (1, 2, 4)]
        assert [block.conv2.padding[0] for block in last_stage] == [stage_rate * u for u in (1, 2, 4)]
        assert model.head[0].rates == rates
        assert model.encoder.reductions[-1] == output_stride
    assert model.encoder.name == "resnet101"  # the paper's backbone by default


def test_deeplabv3_image_pooling_branch_and_aspp_width_256() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("deeplabv3", num_classes=21, encoder="resnet50", head_conv=False)
    aspp = model.head[0]
    assert len(aspp.branches) == 5 and aspp.out_channels == 256
    # head_conv=False is the paper's head: 590,336 parameters (a 3x3 256 conv + BN) fewer than torchvision's
    assert parameter_count(model) == 39_638_869 - (256 * 256 * 9 + 2 * 256)


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_trained_at_stride_16_evaluated_at_stride_8_with_the_same_weights(name: str, tmp_path: Path) -> None:
    model = pixelseg.create_model(name, num_classes=3, encoder="test_resnet").eval()
    built_at_8 = pixelseg.create_model(name, num_classes=3, encoder="test_resnet", output_stride=8).eval()
    built_at_8.load_state_dict(model.state_dict())
    model.set_output_stride(8)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(model(x), built_at_8(x))
    assert model.encoder.reductions[-1] == 8
    assert (model.head[0] if name == "deeplabv3" else model.aspp).rates == (12, 24, 36)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(pixelseg.from_pretrained(tmp_path).eval()(x), built_at_8(x))


def test_multi_grid_on_an_encoder_without_resnet_stages_is_a_clear_error() -> None:
    with pytest.raises(PixelsegError, match="multi_grid needs a ResNet-style encoder"):
        pixelseg.create_model("deeplabv3", num_classes=2, encoder="xception41")
    with pytest.raises(PixelsegError, match="output_stride must be 8 or 16"):
        pixelseg.create_model("deeplabv3", num_classes=2, encoder="resnet18", output_stride=4)


# --- DeepLab v3+ -------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder,smp_encoder", [("resnet50", "resnet50"), ("xception65", "tu-xception65")])
def test_deeplabv3plus_differs_from_smp_only_by_the_batch_norms_after_the_depthwise_convs(
        encoder: str, smp_encoder: str) -> None:
    import segmentation_models_pytorch as smp

    with torch.device("meta"):
        reference = smp.DeepLabV3Plus(smp_encoder, encoder_weights=None, classes=21, encoder_output_stride=16,
                                      decoder_atrous_rates=(6, 12, 18))
        model = pixelseg.create_model("deeplabv3plus", num_classes=21, encoder=encoder)
    # Both: ASPP with separable atrous branches, 48-channel low-level projection, two separable 3x3 convs
    # (smp places one before the upsampling, the paper both after the fusion) and a 1x1 classifier.
    # The paper's separable conv has BN + ReLU after its depthwise part (as in the reference code); smp's
    # has none: 2 x (2048 x 3 for the atrous branches + 304 + 256 for the decoder) = 13,408 parameters.
    depthwise_norms = sum(2 * module[0].in_channels for module in model.modules()
                          if isinstance(module, DepthwiseSeparableConv))
    assert depthwise_norms == 2 * (3 * 2048 + 304 + 256) == 13_408
    assert parameter_count(model) == parameter_count(reference) + depthwise_norms


def test_deeplabv3plus_decoder_fuses_48_channel_stride_4_features() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("deeplabv3plus", num_classes=21)
    assert model.encoder.name == "xception65"  # the paper's best backbone by default
    assert model.encoder.reductions[model.low_level_index] == 4
    assert model.decoder.reduce[0].out_channels == 48
    assert model.decoder.refine[0][0].in_channels == 256 + 48
    assert model.encoder.reductions[-1] == 16 and model.aspp.rates == (6, 12, 18)
    separable = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv)]
    assert len(separable) == 5  # three ASPP branches and two decoder convs


def test_deeplabv3plus_dense_option_uses_ordinary_3x3_convs() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("deeplabv3plus", num_classes=21, encoder="resnet50", separable=False)
    assert not any(isinstance(m, DepthwiseSeparableConv) for m in model.modules())
    assert model.aspp.branches[1][0].kernel_size == (3, 3) and model.aspp.branches[1][0].groups == 1


# --- PSPNet ------------------------------------------------------------------------------------------

def test_pspnet_is_a_stride_8_resnet101_with_a_1_2_3_6_pyramid_head() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("pspnet", num_classes=21)
    assert model.encoder.name == "resnet101" and model.encoder.reductions[-1] == 8
    pyramid, classifier = model.head
    assert pyramid.bins == (1, 2, 3, 6) and pyramid.out_channels == 4096
    pyramid_head = 4 * (2048 * 512 + 2 * 512) + (4096 * 9 * 512 + 2 * 512) + (512 * 21 + 21)
    auxiliary_head = (1024 * 9 * 256 + 2 * 256) + (256 * 21 + 21)
    assert parameter_count(model) == timm_backbone_count("resnet101") + pyramid_head + auxiliary_head


def test_pspnet_auxiliary_head_on_stage_3_weighs_0_4_and_only_in_training() -> None:
    model = pixelseg.create_model("pspnet", num_classes=3, encoder="test_resnet")
    assert model.aux_head[0][0].in_channels == model.encoder.channels[-2]  # stage 3 (layer3)
    x = torch.randn(2, 3, 33, 35)
    output = model.train()(x)
    assert isinstance(output, SegmentationOutput)
    assert output.aux_weights == [0.4] and output.aux[0].shape == output.out.shape == (2, 3, 33, 35)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


# --- FastFCN -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["aspp", "psp"])
def test_fastfcn_replaces_the_dilated_backbone_by_jpu_at_stride_8(head: str) -> None:
    model = pixelseg.create_model("fastfcn", num_classes=3, encoder="test_resnet", head=head).eval()
    assert model.encoder.reductions[-3:] == [8, 16, 32]
    assert all(m.dilation == (1, 1) for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        joint = model.jpu(model.encoder(x)[-3:])
    assert joint.shape == (1, 2048, 8, 10)  # four 512-wide dilated branches at stride 8
    if head == "aspp":
        assert model.head[0].rates == (12, 24, 36)
    else:
        assert model.head[0].bins == (1, 2, 3, 6)


def test_fastfcn_head_and_encoder_are_checked() -> None:
    with pytest.raises(PixelsegError, match="head must be one of"):
        pixelseg.create_model("fastfcn", num_classes=2, encoder="test_resnet", head="encnet")


def test_fastfcn_default_is_resnet50_jpu_and_aspp_head() -> None:
    count = count_on_meta("fastfcn", num_classes=21)
    jpu = (512 + 1024 + 2048) * 512 * 9 + 3 * 2 * 512 + 4 * (1536 * 9 + 2 * 1536 + 1536 * 512 + 2 * 512)
    aspp = (2048 * 256 + 3 * 2048 * 256 * 9 + 2048 * 256 + 5 * 2 * 256) + (1280 * 256 + 2 * 256)
    head = aspp + (256 * 256 * 9 + 2 * 256) + (256 * 21 + 21)
    assert count == timm_backbone_count("resnet50") + jpu + head


# --- every model -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", ALL_MODELS)
def test_save_pretrained_round_trip_gives_the_same_outputs(name: str, kwargs: dict, tmp_path: Path) -> None:
    model = pixelseg.create_model(name, num_classes=3, in_channels=1, **kwargs).eval()
    model.save_pretrained(tmp_path)
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 1, 29, 31)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    from safetensors.torch import save_file

    reference = timm.create_model("test_resnet")
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file(reference.state_dict(), path)
    return path, reference


@pytest.mark.parametrize("name", BACKBONE_MODELS)
def test_encoder_weights_from_a_local_file_are_loaded(name: str, resnet_weights) -> None:
    path, reference = resnet_weights
    model = pixelseg.create_model(name, num_classes=2, encoder="test_resnet", encoder_weights=str(path))
    assert torch.equal(model.encoder.body.conv1[0].weight, reference.conv1[0].weight)
    assert torch.equal(model.encoder.body.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)


@pytest.mark.parametrize("name,kwargs", ALL_MODELS)
def test_models_train_with_decreasing_loss(name: str, kwargs: dict) -> None:
    model = pixelseg.create_model(name, num_classes=2, in_channels=1, **kwargs)
    losses = losses_over_steps(model, in_channels=1, num_classes=2, size=(32, 32), steps=5,
                               lr=1e-4 if name == "deeplabv1" else 1e-3)
    assert losses[-1] < losses[0]
