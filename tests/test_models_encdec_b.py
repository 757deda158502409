"""LinkNet, the Panoptic FPN semantic head and GridNet: structure and parameter counts against the papers
and reference implementations, odd input sizes, save/load, training."""

from __future__ import annotations

import pytest
import torch
from helpers import parameter_count
from test_models_encdec_a import SMALL as SMALL_A
from test_models_encdec_a import shapes_training_losses
from torch import nn

import pixelseg
from pixelseg.models.gridnet import ResidualUnit, SubsamplingUnit, TotalDropout, UpsamplingUnit
from pixelseg.models.modules.upsampling import (
    BilinearUpsample,
    NearestUpsample,
    TransposedConvUpsample,
    Upsample,
)

# Small configurations for the generic behaviour tests (CPU, 2 cores shared).
SMALL = {
    "linknet": {"encoder": "resnet18"},
    "fpn": {"encoder": "resnet18", "pyramid_channels": 32, "segmentation_channels": 32},
    "gridnet": {"channels": [4, 8, 16], "columns": 2},
}


def build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    return pixelseg.create_model(name, num_classes=num_classes, in_channels=in_channels, **SMALL[name])


# ---- LinkNet -------------------------------------------------------------------------------------------
def test_linknet_has_11_5m_parameters_like_the_paper() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("linknet", num_classes=12)
    assert abs(parameter_count(model) - 11.5e6) / 11.5e6 < 0.02


def test_linknet_decoder_blocks_follow_figure_3_and_add_to_the_encoder_features() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("linknet", num_classes=12)
    assert model.encoder.channels == [64, 128, 256, 512] and model.encoder.reductions == [4, 8, 16, 32]
    expected = {3: (512, 128, 256), 2: (256, 64, 128), 1: (128, 32, 64), 0: (64, 16, 64)}
    for level, (m, quarter, n) in expected.items():
        block = model.decoder[level]
        assert block.reduce[0].in_channels == m and block.reduce[0].out_channels == quarter
        assert block.reduce[0].kernel_size == (1, 1) and block.expand[0].kernel_size == (1, 1)
        assert block.expand[0].out_channels == n
        full_conv = block.up.conv if level > 0 else block.up
        assert isinstance(full_conv, nn.ConvTranspose2d) and full_conv.kernel_size == (3, 3)
        assert full_conv.stride == ((2, 2) if level > 0 else (1, 1))
    # Final block: 3x3 full-conv 64 → 32 stride 2, 3x3 conv 32 → 32, 2x2 full-conv 32 → classes stride 2.
    assert (model.final_up1.conv.kernel_size, model.final_up1.conv.stride) == ((3, 3), (2, 2))
    assert model.final_conv[0].kernel_size == (3, 3)
    assert (model.final_up2.conv.kernel_size, model.final_up2.conv.out_channels) == ((2, 2), 12)


def test_linknet_links_are_additions_not_concatenations() -> None:
    model = pixelseg.create_model("linknet", num_classes=2).eval()
    seen: dict[int, torch.Size] = {}
    for level, block in enumerate(model.decoder):
        block.register_forward_hook(lambda _m, _i, out, level=level: seen.__setitem__(level, out.shape))
    features: list[torch.Size] = []
    model.encoder.register_forward_hook(lambda _m, _i, out: features.extend(f.shape for f in out))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    # Decoder block i's output has exactly the shape of encoder block i-1's output: they are summed.
    for level in (1, 2, 3):
        assert seen[level] == features[level - 1]
    assert model.decoder[2].reduce[0].in_channels == 256  # not 256 + 128: nothing was concatenated


def test_linknet_loads_encoder_weights_from_a_local_file(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18")
    save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    model = pixelseg.create_model("linknet", num_classes=2,
                                  encoder_weights=str(tmp_path / "resnet18.safetensors"))
    assert torch.equal(model.encoder.body.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.encoder.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


@pytest.mark.parametrize("upsampling", ["resize_conv", "bilinear", "bed_of_nails"])
def test_linknet_upsampling_operator_is_selectable(upsampling: str) -> None:
    model = pixelseg.create_model("linknet", num_classes=3, upsampling=upsampling).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 3, 37, 53)


def test_linknet_rejects_max_unpooling_which_has_no_indices() -> None:
    with pytest.raises(ValueError, match="indices"):
        pixelseg.create_model("linknet", num_classes=3, upsampling="max_unpool")


# ---- FPN -----------------------------------------------------------------------------------------------
def test_fpn_equals_smp_fpn_plus_the_four_3x3_pyramid_output_convs() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    with torch.device("meta"):
        model = pixelseg.create_model("fpn", num_classes=19)
        reference = smp.FPN(encoder_name="resnet50", encoder_weights=None, classes=19)
    # smp's FPN decoder has the same lateral 1x1 convs (256), the same semantic branch (conv3x3-GN-ReLU,
    # 128 channels) and 1x1 classifier, but leaves out the 3x3 convs of FPN's outputs P2..P5.
    pyramid_output_convs = 4 * (256 * 256 * 9 + 256)
    assert parameter_count(model) == parameter_count(reference) + pyramid_output_convs


def test_fpn_semantic_branch_upsamples_each_level_to_one_quarter() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("fpn", num_classes=19)
    stages = model.semantic.stages
    assert [len(stage) for stage in stages] == [1, 1, 2, 3]  # P2, P3, P4, P5
    upsamplings = [sum(isinstance(m, BilinearUpsample) for m in stage.modules()) for stage in stages]
    assert upsamplings == [0, 1, 2, 3]
    assert all(isinstance(up, NearestUpsample) for up in model.pyramid.up)  # the top-down pathway
    for stage in stages:
        for block in stage:
            assert block[0].out_channels == 128 and isinstance(block[1], nn.GroupNorm)
            assert block[1].num_groups == 32
    assert all(conv.out_channels == 256 for conv in model.pyramid.lateral)
    assert model.semantic.classifier.kernel_size == (1, 1)


@pytest.mark.parametrize("upsampling", ["transposed", "bed_of_nails"])
def test_fpn_upsampling_operator_is_selectable_in_the_whole_decoder(upsampling: str) -> None:
    model = pixelseg.create_model("fpn", num_classes=3, upsampling=upsampling, **SMALL["fpn"]).eval()
    operators = [m for m in model.modules() if isinstance(m, Upsample)]
    assert len(operators) == 3 + 6  # top-down pathway + semantic branch (1 + 2 + 3)
    assert all(op.factor == 2 for op in operators)
    if upsampling == "transposed":
        assert all(isinstance(op, TransposedConvUpsample) for op in operators)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 3, 37, 53)


def test_fpn_rejects_max_unpooling_which_has_no_indices() -> None:
    with pytest.raises(ValueError, match="indices"):
        pixelseg.create_model("fpn", num_classes=3, upsampling="max_unpool", **SMALL["fpn"])


def test_fpn_runs_on_other_timm_encoders() -> None:
    model = pixelseg.create_model("fpn", num_classes=4, encoder="efficientnet_b0", pyramid_channels=32,
                                  segmentation_channels=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 4, 37, 53)


# ---- GridNet -------------------------------------------------------------------------------------------
def _reference_gridnet_parameters(in_channels: int, classes: int, maps=(16, 32, 64, 128, 256),
                                  columns: int = 3) -> int:
    """Parameters of the graph built by the authors' ``createGridNet`` (GridNet.lua), layer by layer."""
    def conv(i: int, o: int) -> int:  # 3x3 convolution or full convolution with bias
        return i * o * 9 + o

    def bn(c: int) -> int:
        return 2 * c

    residual = {c: bn(c) + conv(c, c) + bn(c) + conv(c, c) for c in maps}
    pairs = list(zip(maps[:-1], maps[1:], strict=True))
    subsampling = sum(bn(a) + conv(a, b) + bn(b) + conv(b, b) for a, b in pairs)
    upsampling = sum(bn(b) + conv(b, a) + bn(a) + conv(a, a) for a, b in pairs)
    first = bn(in_channels) + conv(in_channels, maps[0]) + bn(maps[0]) + conv(maps[0], maps[0]) + bn(maps[0])
    last = conv(maps[0], classes) + bn(classes) + conv(classes, classes) + bn(classes)
    return (first + columns * subsampling + (columns - 1) * sum(residual.values())
            + columns * (upsampling + sum(residual.values())) + last)


def test_gridnet_has_the_parameter_count_of_the_reference_graph() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("gridnet", num_classes=19)
    assert parameter_count(model) == _reference_gridnet_parameters(3, 19) == 13_181_097


def test_gridnet_grid_has_5_streams_3_down_and_3_up_columns() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("gridnet", num_classes=19)
    count = {kind: sum(isinstance(m, kind) for m in model.modules())
             for kind in (ResidualUnit, SubsamplingUnit, UpsamplingUnit)}
    assert count == {SubsamplingUnit: 3 * 4, UpsamplingUnit: 3 * 4, ResidualUnit: 2 * 5 + 3 * 5}
    widths = [unit[2].out_channels for unit in model.up_lateral[0]]
    assert widths == [16, 32, 64, 128, 256]
    down = model.down[0][0][2]
    assert (down.stride, down.in_channels, down.out_channels) == ((2, 2), 16, 32)
    up = model.up[0][0].up.conv
    assert isinstance(up, nn.ConvTranspose2d) and (up.stride, up.in_channels, up.out_channels) == ((2, 2), 32, 16)


def test_total_dropout_drops_whole_samples_in_training_and_nothing_in_evaluation() -> None:
    dropout = TotalDropout(0.5)
    x = torch.rand(64, 3, 4, 4) + 1
    y = dropout(x)
    kept = [bool(torch.equal(a, b)) for a, b in zip(y, x, strict=True)]
    dropped = [bool((a == 0).all()) for a in y]
    assert all(k != d for k, d in zip(kept, dropped, strict=True))  # each sample: all or nothing
    assert 10 < sum(dropped) < 54
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_gridnet_total_dropout_makes_training_outputs_random_and_evaluation_deterministic() -> None:
    model = pixelseg.create_model("gridnet", num_classes=2, channels=[4, 8, 16], columns=2, total_dropout=0.5)
    x = torch.randn(1, 3, 16, 16)
    model.train()
    with torch.no_grad():
        outputs = [model(x) for _ in range(6)]
    assert any(not torch.allclose(outputs[0], o) for o in outputs[1:])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# ---- every model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_is_registered_with_its_paper(name: str) -> None:
    from pixelseg.models.registry import model_entry

    assert name in pixelseg.list_models()
    assert "arXiv" in model_entry(name).paper


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (4, 5)])
def test_model_output_has_the_input_size_at_odd_sizes(name: str, in_channels: int, num_classes: int) -> None:
    model = build(name, num_classes, in_channels).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, 37, 53)).shape == (2, num_classes, 37, 53)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_pretrained_round_trip_rebuilds_the_same_model(name: str, tmp_path) -> None:
    model = build(name, 3, 3).eval()
    model.save_pretrained(tmp_path)
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_learns_shapes_images_with_decreasing_loss(name: str) -> None:
    losses = shapes_training_losses(build(name, 4, 3))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_benchmark_config_loads_with_the_typed_config_and_names_the_model(name: str) -> None:
    from pathlib import Path

    from pixelseg.engine.config import load_config

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "encdec_b" / f"isbi_{name}.yaml"
    config = load_config(path)
    assert config.model.name == name and config.data.name == "isbi2012" and config.train.threads == 1


@pytest.mark.parametrize(("name", "kwargs"), [("gridnet", SMALL["gridnet"]),
                                              ("unetplusplus", SMALL_A["unetplusplus"])])
def test_pixelseg_trainer_trains_the_model_and_saves_a_loadable_best_model(name: str, kwargs: dict,
                                                                           tmp_path) -> None:
    """The trainer behind ``pixelseg train`` (UNet++: deep-supervision outputs in training)."""
    import csv
    import math

    from pixelseg.engine.config import Config, DataConfig, ModelConfig, TrainConfig
    from pixelseg.engine.train import train

    config = Config(model=ModelConfig(name=name, kwargs=kwargs),
                    data=DataConfig(name="shapes", num_samples=4, val_samples=2, image_size=32, batch_size=2),
                    train=TrainConfig(epochs=2, out_dir=str(tmp_path / "run"), threads=1))
    run_dir = train(config, quiet=True)
    with open(run_dir / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(row["train_loss"])) for row in rows)
    model = pixelseg.from_pretrained(run_dir / "best").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 4, 37, 53)
