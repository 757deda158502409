"""SharpMask-style top-down refinement and hierarchical multi-scale attention: structure, odd sizes,
any encoder or trunk, save/load, training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import losses_over_steps

import pixelseg
from pixelseg.errors import PixelsegError
from pixelseg.models.base import SegmentationOutput

SMALL_TRUNK = {"trunk": "unet", "trunk_kwargs": {"padding": "same", "base_channels": 4, "depth": 2},
               "attention_channels": 8}


# ---- SharpMask -----------------------------------------------------------------------------------------
def test_sharpmask_has_one_refinement_per_finer_level_with_halving_widths_32_16_8_4() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("sharpmask", num_classes=2)
    assert model.encoder.name == "resnet50"  # the paper's final trunk
    assert len(model.refinements) == 4  # skips at strides 16, 8, 4, 2
    widths = [r.top_down[0][0].in_channels for r in model.refinements]
    assert widths == [32, 16, 8, 4] and model.classifier.in_channels == 2
    skip_inputs = [r.skip[0][0].in_channels for r in model.refinements]
    assert skip_inputs == [1024, 512, 256, 64]
    assert all(conv.kernel_size == (3, 3) for r in model.refinements for conv in r.modules()
               if isinstance(conv, torch.nn.Conv2d))


@pytest.mark.parametrize("encoder", ["resnet18", "convnext_atto", "mobilenetv3_small_050"])
def test_sharpmask_works_on_any_timm_encoder_at_odd_sizes(encoder: str) -> None:
    model = pixelseg.create_model("sharpmask", num_classes=5, in_channels=2, encoder=encoder, channels=16).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 37, 53)).shape == (1, 5, 37, 53)
    assert len(model.refinements) == len(model.encoder.channels) - 1


def test_sharpmask_refinement_merges_skip_and_top_down_then_doubles_resolution() -> None:
    model = pixelseg.create_model("sharpmask", num_classes=3, encoder="resnet18").eval()
    refine = model.refinements[0]
    top_down, skip = torch.randn(1, 32, 4, 6), torch.randn(1, 256, 4, 6)
    with torch.no_grad():
        out = refine(top_down, skip, (8, 12))
        expected = F.interpolate(torch.relu(refine.skip(skip) + refine.top_down(top_down)), size=(8, 12),
                                 mode="bilinear", align_corners=False)
    assert out.shape == (1, 16, 8, 12) and torch.allclose(out, expected)


def test_sharpmask_returns_the_coarse_mask_as_auxiliary_output_in_training() -> None:
    model = pixelseg.create_model("sharpmask", num_classes=4, encoder="resnet18").train()
    output = model(torch.randn(2, 3, 37, 53))
    assert isinstance(output, SegmentationOutput)
    assert output.out.shape == output.aux[0].shape == (2, 4, 37, 53) and output.aux_weights == [0.4]


def test_sharpmask_save_pretrained_round_trip(tmp_path) -> None:
    model = pixelseg.create_model("sharpmask", num_classes=3, encoder="resnet18", channels=64).eval()
    model.save_pretrained(tmp_path)
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_sharpmask_trains_with_decreasing_loss() -> None:
    model = pixelseg.create_model("sharpmask", num_classes=2, in_channels=1, encoder="resnet18", channels=64)
    losses = losses_over_steps(model, in_channels=1, num_classes=2, size=(32, 32), steps=6)
    assert losses[-1] < losses[0]


# ---- Hierarchical multi-scale attention ----------------------------------------------------------------
def test_hmsa_with_a_single_scale_equals_its_trunk() -> None:
    model = pixelseg.create_model("hmsa", num_classes=4, in_channels=3, inference_scales=[1.0],
                                  **SMALL_TRUNK).eval()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(x), model.trunk(x))


def test_hmsa_two_scales_follow_the_papers_equation() -> None:
    model = pixelseg.create_model("hmsa", num_classes=3, inference_scales=[1.0, 0.5], **SMALL_TRUNK).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        high = model.trunk(x)
        low = model.trunk(F.interpolate(x, size=(20, 28), mode="bilinear", align_corners=False))
        alpha = model.attention(low)
        up = lambda t: F.interpolate(t, size=(40, 56), mode="bilinear", align_corners=False)  # noqa: E731
        expected = up(alpha * low) + (1 - up(alpha)) * high  # L = U(a_0.5 * L_0.5) + (1 - U(a_0.5)) * L_1
        assert torch.allclose(model(x), expected, atol=1e-6)
    assert alpha.shape == (1, 1, 20, 28) and 0 < alpha.min() and alpha.max() < 1


def test_hmsa_composes_three_scales_hierarchically_at_inference() -> None:
    model = pixelseg.create_model("hmsa", num_classes=3, inference_scales=[0.5, 1.0, 2.0], **SMALL_TRUNK).eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        out = model(x)
        up = lambda t: F.interpolate(t, size=(37, 53), mode="bilinear", align_corners=False)  # noqa: E731
        rescale = lambda s: F.interpolate(x, size=(round(37 * s), round(53 * s)), mode="bilinear",  # noqa: E731
                                          align_corners=False)
        expected = up(model.trunk(rescale(2.0)))  # from the highest scale down
        for scale in (1.0, 0.5):
            logits = model.trunk(rescale(scale) if scale != 1.0 else x)
            alpha = model.attention(logits)
            expected = up(alpha * logits) + (1 - up(alpha)) * expected
    assert out.shape == (1, 3, 37, 53) and torch.allclose(out, expected, atol=1e-5)
    model.inference_scales = [1.0]
    with torch.no_grad():
        assert not torch.allclose(model(x), out)


def test_hmsa_training_steps_change_the_attention_head_and_lower_the_loss() -> None:
    model = pixelseg.create_model("hmsa", num_classes=2, in_channels=1, **SMALL_TRUNK)
    assert model.training_scales == [0.5, 1.0]
    before = [p.detach().clone() for p in model.attention.parameters()]
    losses = losses_over_steps(model, in_channels=1, num_classes=2, size=(32, 32), steps=6)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.attention.parameters(), strict=True))


def test_hmsa_wraps_a_trunk_with_auxiliary_outputs_and_an_encoder() -> None:
    model = pixelseg.create_model("hmsa", num_classes=3, trunk="sharpmask", encoder="resnet18",
                                  attention_channels=8).train()
    assert model.trunk.encoder.name == "resnet18"
    output = model(torch.randn(2, 3, 37, 53))
    assert isinstance(output, SegmentationOutput) and output.out.shape == (2, 3, 37, 53)
    assert output.aux_weights == [0.4]  # the 1x trunk's coarse mask


def test_hmsa_saves_its_trunk_by_name_as_json_and_reloads(tmp_path) -> None:
    model = pixelseg.create_model("hmsa", num_classes=3, inference_scales=[0.5, 1.0], **SMALL_TRUNK).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kwargs"]["trunk"] == "unet" and config["kwargs"]["trunk_kwargs"]["base_channels"] == 4
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_hmsa_rejects_an_unknown_trunk_with_a_clear_error() -> None:
    with pytest.raises(PixelsegError, match="unknown model 'hrnet_w48'"):
        pixelseg.create_model("hmsa", num_classes=3, trunk="hrnet_w48")


def test_hmsa_rejects_bad_scales_and_itself_as_trunk_with_one_line_errors() -> None:
    with pytest.raises(PixelsegError, match="inference_scales must be a non-empty list"):
        pixelseg.create_model("hmsa", num_classes=2, inference_scales=[], **SMALL_TRUNK)
    with pytest.raises(PixelsegError, match="training_scales must be a non-empty list of positive"):
        pixelseg.create_model("hmsa", num_classes=2, training_scales=[0.0, 1.0], **SMALL_TRUNK)
    with pytest.raises(PixelsegError, match="cannot be hmsa itself"):
        pixelseg.create_model("hmsa", num_classes=2, **{**SMALL_TRUNK, "trunk": "hmsa"})


def test_hmsa_default_trunk_is_hrnetv2_w48() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("hmsa", num_classes=19)
    assert model.trunk.pixelseg_config["name"] == "hrnetv2_w48"
    assert model.inference_scales == [0.5, 1.0, 2.0]


def test_tta_asks_a_model_that_fuses_scales_itself_through_its_hook_not_its_class() -> None:
    from pixelseg.inference.tta import tta_logits

    class FusesScales(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[float, ...]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the hook, not forward, must be used for several scales")

        def multi_scale_logits(self, images: torch.Tensor, scales) -> torch.Tensor:
            self.seen.append(tuple(scales))
            return images[:, :2] * len(scales)

    model = FusesScales()
    images = torch.randn(1, 3, 8, 10)
    assert torch.equal(tta_logits(model, images, scales=(0.5, 1.0)), images[:, :2] * 2)
    assert model.seen == [(0.5, 1.0)]
    hmsa = pixelseg.create_model("hmsa", num_classes=3, inference_scales=[1.0], **SMALL_TRUNK).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(hmsa.multi_scale_logits(x, (0.5, 1.0)), hmsa.compose(x, (0.5, 1.0)))
