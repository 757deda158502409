"""SegNet, DeconvNet, FC-DenseNet, UNet++ and TernausNet: structure and parameter counts against the
papers, pretrained VGG weights, odd sizes, upsampling options, save/load and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import parameter_count
from torch import nn

import pixelseg
from pixelseg.errors import PixelsegError
from pixelseg.models.base import SegmentationOutput
from pixelseg.models.modules.upsampling import UPSAMPLING_KINDS, MaxUnpoolUpsample

# Small widths for shape, save/load and training tests (the defaults are the papers' networks).
SMALL: dict[str, dict] = {
    "segnet": {"base_channels": 4},
    "deconvnet": {"base_channels": 4, "fc_channels": 16},
    "fc_densenet56": {"growth_rate": 3, "first_channels": 8, "dropout": 0.0},
    "fc_densenet67": {"growth_rate": 2, "first_channels": 8, "dropout": 0.0},
    "fc_densenet103": {"growth_rate": 2, "first_channels": 8, "dropout": 0.0},
    "unetplusplus": {"filters": [4, 8, 16, 32, 64], "dropout": 0.0},
    "unet_baseline_zhou": {"filters": [4, 8, 16, 32, 64], "dropout": 0.0},
    "ternausnet": {"base_channels": 4, "num_filters": 4},
}
WITH_INDICES = {"segnet", "deconvnet"}  # the models whose decoders can max-unpool


def build_on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return pixelseg.create_model(name, **kwargs)


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> int:
    return 9 * in_channels * out_channels + (out_channels if bias else 0)


# ---- SegNet -------------------------------------------------------------------------------------------
def test_segnet_has_29_5m_parameters_like_the_paper() -> None:
    count = parameter_count(build_on_meta("segnet", num_classes=11))
    assert abs(count - 29.5e6) / 29.5e6 < 0.01
    assert count == 29_441_419


def test_segnet_mirrors_the_13_vgg16_bn_convolutions_and_unpools_by_default() -> None:
    model = build_on_meta("segnet", num_classes=11)
    encoder_convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(encoder_convs) == len(decoder_convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules()) == 13
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert [c.out_channels for c in encoder_convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert [c.out_channels for c in decoder_convs] == [512] * 5 + [256, 256, 256, 128, 128, 64, 64, 11]
    assert all(isinstance(up, MaxUnpoolUpsample) for up in model.upsamples)


def test_segnet_decoder_unpools_with_the_encoders_max_pooling_indices() -> None:
    model = pixelseg.create_model("segnet", num_classes=3, **SMALL["segnet"]).eval()
    captured: dict[str, torch.Tensor] = {}
    model.upsamples[0].register_forward_hook(
        lambda module, args, out: captured.update(y=args[0], indices=args[1], out=out))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        conv5_3 = model.encoder(x)[-1][0]
    _, indices = nn.MaxPool2d(2, return_indices=True)(conv5_3)
    assert torch.equal(captured["indices"], indices)
    # Each decoder value lands where pool5 found its maximum; everything else is zero.
    expected = torch.zeros_like(conv5_3).flatten(2).scatter_(2, indices.flatten(2), captured["y"].flatten(2))
    assert torch.equal(captured["out"], expected.view_as(conv5_3))


def test_segnet_loads_timm_vgg16_bn_weights_from_a_local_file(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("vgg16_bn").eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that the bias folding is tested
        for module in reference.features:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
            if isinstance(module, nn.Conv2d):
                module.bias.uniform_(-1, 1)
    features = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    save_file(features, tmp_path / "vgg16_bn.safetensors")
    model = pixelseg.create_model("segnet", num_classes=2,
                                  encoder_weights=str(tmp_path / "vgg16_bn.safetensors")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # timm features[:43] is conv1_1 ... relu5_3, before pool5.
        assert torch.allclose(model.encoder(x)[-1][0], reference.features[:43](x), atol=1e-4, rtol=1e-4)


# ---- DeconvNet ----------------------------------------------------------------------------------------
def test_deconvnet_has_252m_parameters_like_the_paper() -> None:
    count = parameter_count(build_on_meta("deconvnet", num_classes=21))
    assert abs(count - 252e6) / 252e6 < 0.01


def test_deconvnet_follows_table_1_fc6_7x7_to_1x1_and_mirrored_deconvolutions() -> None:
    model = build_on_meta("deconvnet", num_classes=21)
    assert model.fc6[0].kernel_size == (7, 7) and model.fc6[0].out_channels == 4096
    assert model.fc7[0].kernel_size == (1, 1) and model.fc7[0].out_channels == 4096
    assert isinstance(model.deconv_fc6[0], nn.ConvTranspose2d) and model.deconv_fc6[0].kernel_size == (7, 7)
    deconvs = [m for m in model.deconvs.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [d.out_channels for d in deconvs] == [512] * 5 + [256, 256, 256, 128, 128, 64, 64, 64]
    assert all(d.kernel_size == (3, 3) and d.stride == (1, 1) for d in deconvs)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13 + 2 + 1 + 13  # every convolution and deconvolution is batch-normalised
    assert model.score.out_channels == 21 and model.score.kernel_size == (1, 1)

    small = pixelseg.create_model("deconvnet", num_classes=3, **SMALL["deconvnet"]).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    small.fc7.register_forward_hook(lambda m, a, out: sizes.update(fc7=tuple(out.shape[-2:])))
    small.deconv_fc6.register_forward_hook(lambda m, a, out: sizes.update(deconv_fc6=tuple(out.shape[-2:])))
    with torch.no_grad():
        assert small(torch.randn(1, 3, 224, 224)).shape == (1, 3, 224, 224)
    assert sizes == {"fc7": (1, 1), "deconv_fc6": (7, 7)}  # 7x7 pool5 → 1x1 fc6/fc7 → 7x7 again


def test_deconvnet_loads_vgg16_convolutions_and_fc6_fc7_from_a_local_file(tmp_path) -> None:
    from safetensors.torch import save_file
    from timm.models.vgg import VGG

    widths = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
    reference = VGG(cfg=widths)  # timm's VGG16 layout at a small width: the same state-dict keys
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    state["pre_logits.fc1.weight"] = torch.randn(16, 32, 7, 7)
    state["pre_logits.fc1.bias"] = torch.randn(16)
    state["pre_logits.fc2.weight"] = torch.randn(16, 16, 1, 1)
    state["pre_logits.fc2.bias"] = torch.randn(16)
    save_file(state, tmp_path / "vgg16.safetensors")
    model = pixelseg.create_model("deconvnet", num_classes=2, **SMALL["deconvnet"],
                                  encoder_weights=str(tmp_path / "vgg16.safetensors"))
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert torch.equal(convs[0].weight, reference.features[0].weight)
    assert torch.equal(convs[12].weight, reference.features[28].weight)
    assert torch.equal(model.fc6[0].weight, state["pre_logits.fc1.weight"])
    assert torch.equal(model.fc7[0].weight, state["pre_logits.fc2.weight"])


def test_vgg_weights_of_the_wrong_shape_are_a_one_line_error_naming_the_file(tmp_path) -> None:
    from safetensors.torch import save_file
    from timm.models.vgg import VGG

    wide = VGG(cfg=[8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"])
    save_file({k: v for k, v in wide.state_dict().items() if k.startswith("features.")},
              tmp_path / "bad.safetensors")
    with pytest.raises(PixelsegError, match=r"bad.safetensors: 'features.0' has shape \(8, 3, 3, 3\)"):
        pixelseg.create_model("segnet", num_classes=2, **SMALL["segnet"],
                              encoder_weights=str(tmp_path / "bad.safetensors"))


# ---- FC-DenseNet --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,paper", [("fc_densenet103", 9.4e6), ("fc_densenet67", 3.5e6)])
def test_fc_densenet103_and_67_have_the_papers_parameter_counts(name: str, paper: float) -> None:
    count = parameter_count(build_on_meta(name, num_classes=11))
    assert abs(count - paper) / paper < 0.02


def fc_densenet_count_from_table(down: list[int], bottleneck: int, growth: int, classes: int,
                                 first: int = 48) -> int:
    """The paper's Table 1, counted by hand: layers BN+ReLU+3x3 conv, TD BN+ReLU+1x1 conv, TU 3x3 deconv."""
    def dense(channels: int, layers: int) -> int:
        return sum(2 * (channels + k * growth) + conv3x3(channels + k * growth, growth) for k in range(layers))

    total, channels, skips = conv3x3(3, first), first, []
    for layers in down:
        total += dense(channels, layers)
        channels += layers * growth
        skips.append(channels)
        total += 2 * channels + channels * channels + channels  # transition down
    total += dense(channels, bottleneck)
    upsampled = bottleneck * growth
    for layers, skip in zip(reversed(down), reversed(skips), strict=True):
        total += conv3x3(upsampled, upsampled)  # transition up: 3x3 transposed convolution
        total += dense(upsampled + skip, layers)
        channels = upsampled + skip + layers * growth
        upsampled = layers * growth
    return total + channels * classes + classes


def test_fc_densenet56_has_the_count_its_layer_table_implies_not_the_papers_rounded_1_5m() -> None:
    count = parameter_count(build_on_meta("fc_densenet56", num_classes=11))
    assert count == fc_densenet_count_from_table([4] * 5, 4, 12, 11) == 1_376_795
    assert abs(count - 1.5e6) / 1.5e6 > 0.05  # the paper's "1.5M" does not follow from its own table
    assert parameter_count(build_on_meta("fc_densenet103", num_classes=11)) == fc_densenet_count_from_table(
        [4, 5, 7, 10, 12], 15, 16, 11)


def test_fc_densenet103_feature_map_counts_follow_table_1() -> None:
    model = build_on_meta("fc_densenet103", num_classes=11)
    down = [b.layers[0][0].num_features + b.new_channels for b in model.down_blocks]
    bottleneck = model.bottleneck.layers[0][0].num_features + model.bottleneck.new_channels
    up = [b.layers[0][0].num_features + b.new_channels for b in model.up_blocks]
    # Table 1 lists 578 for the third up block; 464 + 7 x 16 = 576 (a typo in the paper).
    assert down + [bottleneck] + up == [112, 192, 304, 464, 656, 896, 1088, 816, 576, 384, 256]
    assert model.first_conv.out_channels == 48 and model.classifier.in_channels == 256


def test_fc_densenet_transition_up_upsamples_only_the_new_maps_of_the_previous_block() -> None:
    model = build_on_meta("fc_densenet103", num_classes=11)
    widths = [t.conv.in_channels for t in model.transitions_up]
    assert widths == [15 * 16, 12 * 16, 10 * 16, 7 * 16, 5 * 16]
    assert all(t.conv.kernel_size == (3, 3) and t.conv.stride == (2, 2) for t in model.transitions_up)


# ---- UNet++ -------------------------------------------------------------------------------------------
def test_unetplusplus_has_9_04m_parameters_and_its_unet_baseline_7_76m() -> None:
    unetpp = parameter_count(build_on_meta("unetplusplus", num_classes=1, in_channels=1))
    baseline = parameter_count(build_on_meta("unet_baseline_zhou", num_classes=1, in_channels=1))
    assert abs(unetpp - 9.04e6) / 9.04e6 < 0.01 and abs(baseline - 7.76e6) / 7.76e6 < 0.01
    assert (unetpp, baseline) == (9_041_700, 7_759_521)  # the authors' Keras summaries (4 heads / 1 head)


def test_unetplusplus_nodes_see_all_earlier_nodes_of_their_level() -> None:
    model = build_on_meta("unetplusplus", num_classes=1, in_channels=1)
    filters = (32, 64, 128, 256, 512)
    for i in range(4):
        for j in range(1, 5 - i):
            assert model.nodes[f"x_{i}_{j}"][0].in_channels == (j + 1) * filters[i]
            up = model.ups[f"up_{i}_{j}"]
            assert up.conv.kernel_size == (2, 2) and up.conv.in_channels == filters[i + 1]
    assert sorted(model.heads) == ["head_1", "head_2", "head_3", "head_4"]
    baseline = build_on_meta("unet_baseline_zhou", num_classes=1, in_channels=1)
    assert sorted(baseline.nodes) == ["x_0_0", "x_0_4", "x_1_0", "x_1_3", "x_2_0", "x_2_2", "x_3_0", "x_3_1",
                                      "x_4_0"]
    assert all(baseline.nodes[f"x_{i}_{4 - i}"][0].in_channels == 2 * filters[i] for i in range(4))


def test_unetplusplus_deep_supervision_puts_a_loss_on_every_x0j_head() -> None:
    model = pixelseg.create_model("unetplusplus", num_classes=2, **SMALL["unetplusplus"]).train()
    output = model(torch.randn(2, 3, 37, 53))
    assert isinstance(output, SegmentationOutput)
    assert output.out.shape == (2, 2, 37, 53) and len(output.aux) == 3 and output.aux_weights == [1.0] * 3
    assert all(aux.shape == (2, 2, 37, 53) for aux in output.aux)
    loss = sum(nn.functional.cross_entropy(o, torch.zeros(2, 37, 53, dtype=torch.long))
               for o in [output.out, *output.aux])
    loss.backward()
    assert all(model.heads[f"head_{j}"].weight.grad.abs().sum() > 0 for j in range(1, 5))
    model.eval()  # accurate mode: the heads averaged
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        heads = [model.prune(d)(x) for d in range(1, 5)]
        assert torch.allclose(model.prune(None)(x), torch.stack(heads).mean(0), atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unetplusplus_pruned_to_depth_d_is_exactly_the_sub_network(depth: int) -> None:
    filters = SMALL["unetplusplus"]["filters"]
    full = pixelseg.create_model("unetplusplus", num_classes=2, in_channels=3, filters=filters,
                                 dropout=0.0).eval()
    # The stand-alone UNet++ L_depth, given the full network's weights of the nodes with i + j <= depth.
    sub = pixelseg.create_model("unetplusplus", num_classes=2, in_channels=3, filters=filters[:depth + 1],
                                dropout=0.0).eval()
    full_state = full.state_dict()
    sub.load_state_dict({k: full_state[k] for k in sub.state_dict()}, strict=True)
    # Layers outside the sub-network are poisoned: a pruned forward pass must not touch them.
    sub_keys = set(sub.state_dict())
    with torch.no_grad():
        for key, value in full.state_dict().items():
            if key not in sub_keys and value.is_floating_point():
                value.fill_(float("nan"))
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        pruned = full.prune(depth)(x)
        assert torch.isfinite(pruned).all()
        assert torch.allclose(pruned, sub.prune(depth)(x), atol=1e-6)
    full.prune(None)
    with torch.no_grad():
        assert torch.isnan(full(x)).any()  # the full network does use the poisoned layers


# ---- TernausNet ---------------------------------------------------------------------------------------
def test_ternausnet_layers_match_the_authors_unet11() -> None:
    model = build_on_meta("ternausnet", num_classes=1)
    encoder = [conv3x3(a, b) for a, b in [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512),
                                           (512, 512), (512, 512)]]
    # (in, middle, out) of the centre and decoder blocks: 3x3 conv in → middle, 3x3 deconv middle → out.
    blocks = [(512, 512, 256), (768, 512, 256), (768, 512, 128), (384, 256, 64), (192, 128, 32)]
    decoder = [conv3x3(i, m) + conv3x3(m, o) for i, m, o in blocks]
    expected = sum(encoder) + sum(decoder) + conv3x3(96, 32) + 32 + 1
    assert parameter_count(model) == expected == 22_927_393
    assert len([m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]) == 8


def test_ternausnet_loads_timm_vgg11_weights_from_a_local_file(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("vgg11").eval()
    save_file({k: v for k, v in reference.state_dict().items() if k.startswith("features.")},
              tmp_path / "vgg11.safetensors")
    model = pixelseg.create_model("ternausnet", num_classes=2,
                                  encoder_weights=str(tmp_path / "vgg11.safetensors")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encoder(x)[-1][0], reference.features[:20](x))  # up to relu5_2
    one_channel = pixelseg.create_model("ternausnet", num_classes=2, in_channels=1,
                                        encoder_weights=str(tmp_path / "vgg11.safetensors"))
    assert torch.allclose(one_channel.encoder.stages[0][0][0].weight,
                          reference.features[0].weight.sum(1, keepdim=True))


# ---- every model --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL))
def test_models_are_registered_and_keep_odd_input_sizes_for_any_channels(name: str) -> None:
    assert name in pixelseg.list_models()
    model = pixelseg.create_model(name, num_classes=5, in_channels=2, **SMALL[name]).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 37, 53)).shape == (2, 5, 37, 53)
        assert model(torch.randn(1, 2, 64, 32)).shape == (1, 5, 64, 32)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("kind", UPSAMPLING_KINDS)
def test_every_decoder_takes_every_upsampling_it_can(name: str, kind: str) -> None:
    if kind == "max_unpool" and name not in WITH_INDICES:
        with pytest.raises(PixelsegError,
                           match="max_unpool"):
            pixelseg.create_model(name, num_classes=3, upsampling=kind, **SMALL[name])
        return
    model = pixelseg.create_model(name, num_classes=3, upsampling=kind, **SMALL[name]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 3, 37, 53)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_pretrained_round_trip_gives_equal_outputs(name: str, tmp_path) -> None:
    model = pixelseg.create_model(name, num_classes=3, in_channels=1, upsampling="bilinear", **SMALL[name])
    model.eval()
    model.save_pretrained(tmp_path)
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 1, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def shapes_training_losses(model: nn.Module, *, samples: int = 2, size: int = 32, steps: int = 6) -> list[float]:
    """Adam steps on a fixed batch of the built-in Shapes set (RGB, 4 classes) with the trainer's loss
    (cross entropy on the main logits plus the weighted auxiliary heads); the loss after each step."""
    from pixelseg.data.shapes import Shapes
    from pixelseg.tasks.semantic import segmentation_loss as compute_loss

    shapes = Shapes(samples, size=size)
    pairs = [shapes.load(index) for index in range(samples)]
    images = torch.from_numpy(np.stack([np.asarray(image) for image, _ in pairs])).permute(0, 3, 1, 2) / 255
    masks = torch.from_numpy(np.stack([mask for _, mask in pairs]))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = compute_loss(model(images), masks, criterion)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", sorted(SMALL))
def test_models_learn_shapes_images_with_decreasing_loss(name: str) -> None:
    model = pixelseg.create_model(name, num_classes=4, **SMALL[name])
    losses = shapes_training_losses(model)
    assert losses[-1] < losses[0]
