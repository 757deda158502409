"""U-Net and FCN: structure and parameter counts against the papers, sizes, save/load, training."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import losses_over_steps, parameter_count

import pixelseg
from pixelseg.errors import PixelsegError


def test_unet_has_31030658_parameters_like_the_paper() -> None:
    model = pixelseg.create_model("unet", num_classes=2, in_channels=1)
    assert parameter_count(model) == 31_030_658


def test_unet_drops_out_the_two_deepest_levels_like_the_authors_caffe_model() -> None:
    """"Drop-out layers at the end of the contracting path" (Sec. 3): 0.5 on the 512- and 1024-channel outputs."""
    torch.manual_seed(0)
    model = pixelseg.create_model("unet", num_classes=2, in_channels=1, base_channels=4, padding="same")
    assert model.dropout.p == 0.5
    seen = []
    model.dropout.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    first, second = model(x), model(x)
    assert torch.equal(first, second) and seen == [32, 64] * 2  # 4·2³ and 4·2⁴ channels, in each call
    model.train()
    assert not torch.equal(model(x), model(x))
    quiet = pixelseg.create_model("unet", num_classes=2, in_channels=1, base_channels=4, padding="same", dropout=0.0)
    quiet.train()
    assert torch.equal(quiet(x), quiet(x))  # no batch norm here: without drop-out training mode is deterministic


def test_unet_valid_convolutions_map_572_to_388_as_in_figure_1() -> None:
    model = pixelseg.create_model("unet", num_classes=2, in_channels=1, base_channels=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    (height, width), (top, left) = model.input_size_for((388, 388))
    assert (height, width, top, left) == (572, 572, 92, 92)


def test_fcn8s_has_134m_parameters_like_the_paper() -> None:
    model = pixelseg.create_model("fcn8s", num_classes=21)
    # 134,489,759 counts the fixed bilinear 8x up-convolution (21*21*16*16 = 112,896), a buffer here.
    assert abs(parameter_count(model) - 134_489_759) / 134_489_759 < 0.01
    assert parameter_count(model) + 21 * 21 * 16 * 16 == 134_489_759


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_fc6_fc7_are_convolutions_and_output_matches_any_input_size(name: str) -> None:
    model = pixelseg.create_model(name, num_classes=5).eval()
    assert model.fc6[0].kernel_size == (7, 7) and model.fc7[0].kernel_size == (1, 1)
    with torch.no_grad():
        for size in [(37, 53), (64, 96)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_fcn_learned_upsampling_starts_bilinear_and_final_one_is_fixed() -> None:
    model = pixelseg.create_model("fcn8s", num_classes=3)
    names = {n for n, _ in model.named_parameters()}
    assert "upscore2.weight" in names and "upscore_pool4.weight" in names
    assert not any(n.startswith("upscore_final") for n in names)
    upsampled = model.upscore2(torch.ones(1, 3, 4, 4))
    assert torch.allclose(upsampled[..., 2:-2, 2:-2], torch.ones(1, 3, 6, 6))


@pytest.mark.parametrize("kwargs", [{"padding": "same", "base_channels": 8},
                                    {"encoder": "resnet18"}])
def test_unet_variants_keep_odd_sizes(kwargs: dict) -> None:
    model = pixelseg.create_model("unet", num_classes=4, in_channels=3, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 37, 53)).shape == (2, 4, 37, 53)


def test_save_pretrained_round_trip_rebuilds_the_exact_model(tmp_path) -> None:
    model = pixelseg.create_model("unet", num_classes=3, in_channels=2, padding="same", base_channels=8).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["kwargs"]["padding"] == "same"
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_encoder_weights_from_a_local_file_are_loaded(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18")
    save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    model = pixelseg.create_model("unet", num_classes=2, encoder="resnet18",
                                  encoder_weights=str(tmp_path / "resnet18.safetensors"))
    assert torch.equal(model.encoder.body.conv1.weight, reference.conv1.weight)


def test_fcn_loads_vgg16_weights_with_fc6_fc7_from_a_local_file(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("vgg16")
    save_file(reference.state_dict(), tmp_path / "vgg16.safetensors")
    model = pixelseg.create_model("fcn32s", num_classes=2, encoder_weights=str(tmp_path / "vgg16.safetensors"))
    assert torch.equal(model.fc6[0].weight, reference.pre_logits.fc1.weight)
    assert torch.equal(model.encoder.stages[4][2][0].weight, reference.features[28].weight)


def test_unknown_model_name_suggests_the_closest() -> None:
    with pytest.raises(PixelsegError, match="did you mean 'unet'"):
        pixelseg.create_model("unte", num_classes=2)


@pytest.mark.parametrize("name,kwargs,size", [
    ("unet", {"base_channels": 8, "padding": "same"}, (32, 32)),
    ("unet", {"base_channels": 4, "depth": 2}, (60, 60)),
    ("fcn8s", {}, (32, 32)),
])
def test_models_train_with_decreasing_loss(name: str, kwargs: dict, size: tuple[int, int]) -> None:
    model = pixelseg.create_model(name, num_classes=2, in_channels=1, **kwargs)
    losses = losses_over_steps(model, in_channels=1, num_classes=2, size=size, steps=6,
                               lr=1e-4 if name.startswith("fcn") else 1e-3)
    assert losses[-1] < losses[0]


def test_valid_unet_refuses_an_input_that_does_not_fit_in_one_line() -> None:
    from pixelseg.errors import PixelsegError

    model = pixelseg.create_model("unet", num_classes=2, in_channels=1)
    with pytest.raises(PixelsegError, match=r"input side 64 .* 188 \+ 16k"):
        model(torch.zeros(1, 1, 64, 64))
    assert model(torch.zeros(1, 1, 188, 204)).shape[-2:] == (4, 20)
