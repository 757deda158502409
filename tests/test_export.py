"""ONNX export of every registered model (small configurations), checked with onnx.checker and ONNX Runtime."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import pixelseg
from pixelseg import cli
from pixelseg.errors import PixelsegError
from pixelseg.inference import export as export_module
from pixelseg.inference.export import OPSET, export_model_dir, export_onnx, metadata_path, sample_size
from pixelseg.inference.speedups import fold_batchnorm, optimize_for_inference
from pixelseg.models.hmsa import _rounded_product
from pixelseg.models.modules.blocks import crop_to, pad_to_multiple
from pixelseg.models.modules.context import adaptive_avg_pool2d
from pixelseg.models.modules.upsampling import make_upsample

# Small widths so that each export takes seconds (the defaults are the papers' networks).
SMALL: dict[str, dict] = {
    "danet": {"encoder": "test_resnet"},
    "deconvnet": {"base_channels": 4, "fc_channels": 16},
    "deeplabv1": {"fc_channels": 16},
    "deeplabv2": {"encoder": "test_resnet"},
    "deeplabv3": {"encoder": "test_resnet"},
    "deeplabv3plus": {"encoder": "test_resnet"},
    "fastfcn": {"encoder": "test_resnet", "jpu_width": 64},
    "fc_densenet56": {"growth_rate": 3, "first_channels": 8, "dropout": 0.0},
    "fc_densenet67": {"growth_rate": 2, "first_channels": 8, "dropout": 0.0},
    "fc_densenet103": {"growth_rate": 2, "first_channels": 8, "dropout": 0.0},
    "fpn": {"encoder": "resnet18", "pyramid_channels": 32, "segmentation_channels": 32},
    "gridnet": {"channels": [4, 8, 16], "columns": 2},
    "hmsa": {"trunk": "deeplabv3", "encoder": "test_resnet", "attention_channels": 8},
    "hrnetv2_w18": {},
    "linknet": {"encoder": "resnet18"},
    "pspnet": {"encoder": "test_resnet"},
    "segnet": {"base_channels": 4},
    "sharpmask": {"encoder": "test_resnet", "channels": 8},
    "ternausnet": {"base_channels": 4, "num_filters": 4},
    "unet": {"base_channels": 4, "depth": 3},
    "unet_baseline_zhou": {"filters": [4, 8, 16, 32, 64], "dropout": 0.0},
    "unetplusplus": {"filters": [4, 8, 16, 32, 64], "dropout": 0.0},
    "vnet": {"channels": [4, 8, 16], "down_convs": [1, 2, 2], "up_convs": [2, 1]},
}
# Not tested here: the VGG-16 FCNs (134M parameters, ~20 s each to export) and HRNetV2-W48 (W18 stands
# for the architecture; widths are fixed).
NOT_SMALL = {"fcn8s", "fcn16s", "fcn32s", "hrnetv2_w48"}
# Detection models: torchvision's detectors, whose lists-of-dicts outputs are not an ONNX image graph.
DETECTION = {"mask_rcnn", "keypoint_rcnn", "panoptic_fpn", "yolact", "polarmask", "panet", "tensormask", "fcis"}
# Wrappers around another registered model (multi-scale inputs, CRF-as-RNN): exported through the model they wrap.
WRAPPERS = {"msc", "crf_as_rnn"}
# The TorchScript exporter's deprecation warning (PyTorch 2.9) is expected only where a test uses that exporter:
# its own ONNX translations, the fallback from torch.export, no onnxscript, an opset below 18. No registered
# model needs it any more (export.TORCHSCRIPT_MODELS is empty; a model listed there gets this mark below).
USES_TORCHSCRIPT = pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")


def test_every_registered_model_has_a_small_configuration_or_is_named_as_too_large() -> None:
    assert set(pixelseg.list_models()) == set(SMALL) | NOT_SMALL | DETECTION | WRAPPERS


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=USES_TORCHSCRIPT)
                                  if name in export_module.TORCHSCRIPT_MODELS else name for name in sorted(SMALL)])
def test_exported_graph_matches_eager_on_onnx_runtime_at_another_size(name: str, tmp_path: Path) -> None:
    model = pixelseg.create_model(name, num_classes=3, in_channels=3, **SMALL[name]).eval()
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, path, in_channels=3, name=name)
    if export_module.dynamo_available():  # every model but TORCHSCRIPT_MODELS goes through torch.export
        assert report.exporter == ("torchscript" if name in export_module.TORCHSCRIPT_MODELS else "dynamo"), \
            report.notes
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == OPSET
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    volume = name == "vnet"
    assert dims == ["batch", ""] + (["depth"] if volume else []) + ["height", "width"]
    # An independent run at a size the exporter never saw (not a multiple of the strides; HMSA's half scale
    # rounds 23.5 up to 24 and 28.5 down to 28).
    size = sample_size(model, 41) if name == "unet" else (9, 19, 13) if volume else (47, 57)
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = pixelseg.models.base.main_logits(model(images))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1).numpy())


@USES_TORCHSCRIPT  # the fallback after torch.export's graph failed the check
def test_a_graph_that_only_works_at_the_traced_size_is_refused_with_the_difference(tmp_path: Path) -> None:
    class SizeBranch(nn.Module):  # a Python branch on the input size: the tracer keeps one side
        def forward(self, x):
            return x * 2 if x.shape[-1] % 16 == 0 else x * 3

    with pytest.raises(PixelsegError, match=r"at 97x45 ONNX Runtime differs from PyTorch by"):
        export_onnx(SizeBranch(), tmp_path / "branch.onnx", in_channels=3, side=32)
    assert not (tmp_path / "branch.onnx").exists()


class _Pyramid(nn.Module):
    def __init__(self, bins: tuple) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [F.adaptive_avg_pool2d(x, b) for b in self.bins]
        return torch.cat([p.flatten(2) for p in pooled], dim=2)


class _PoolUnpool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, indices = F.max_pool2d(x, 2, return_indices=True)
        # The operator F.max_unpool2d calls (its Python size check cannot run on traced sizes),
        # back to the input's size, odd or even.
        return torch._C._nn.max_unpool2d(pooled * 2 + 1, indices, list(x.shape[-2:]))


def _onnx_runs(module: nn.Module, path: Path, sample: torch.Tensor, sizes: list[tuple[int, int]],
               exporter: str = "torchscript") -> None:
    """Export through export_onnx, then compare ONNX Runtime with eager at ``sizes`` (none of them traced)."""
    export_onnx(module, path, in_channels=sample.shape[1], side=sample.shape[-2], check_sizes=(), exporter=exporter)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in sizes:
        images = torch.randn(2, sample.shape[1], *size)
        (got,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = module(images).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6, err_msg=str(size))


@USES_TORCHSCRIPT  # this module's translation for the TorchScript exporter
def test_adaptive_average_pooling_exports_with_pytorchs_bins_at_any_size(tmp_path: Path) -> None:
    # PSPNet's bins and a non-square one; sizes that divide, do not divide, and are smaller than the bins
    # (overlapping bins).
    _onnx_runs(_Pyramid((1, 2, 3, 6, (2, 5))), tmp_path / "pyramid.onnx", torch.randn(1, 2, 16, 24),
               [(16, 24), (13, 29), (6, 6), (5, 4), (61, 7)])


@USES_TORCHSCRIPT  # this module's translation for the TorchScript exporter
def test_max_unpooling_exports_as_a_scatter_at_any_size(tmp_path: Path) -> None:
    _onnx_runs(_PoolUnpool(), tmp_path / "unpool.onnx", torch.randn(1, 3, 16, 24), [(16, 24), (11, 15), (2, 6), (41, 18)])


class _ExportablePyramid(nn.Module):  # PSPNet's pooling, as the models call it
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([adaptive_avg_pool2d(x, bins).flatten(2) for bins in (1, 2, 3, 6)], dim=2)


def test_the_models_adaptive_pooling_keeps_pytorchs_bins_under_torch_export(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    module = _ExportablePyramid()
    for size in ((16, 24), (13, 29), (5, 4), (61, 7)):  # the eager helper is F.adaptive_avg_pool2d itself
        x = torch.randn(2, 3, *size)
        assert torch.equal(module(x), torch.cat([F.adaptive_avg_pool2d(x, b).flatten(2) for b in (1, 2, 3, 6)], 2))
    _onnx_runs(module, tmp_path / "pyramid.onnx", torch.randn(1, 3, 16, 24), [(16, 24), (13, 29), (6, 6), (5, 4),
                                                                           (61, 7)], exporter="dynamo")


class _UpToSkip(nn.Module):  # a decoder step: a transposed convolution up to an odd skip connection's size
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.up = make_upsample("transposed", 3, 3, 2, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.max_pool2d(x, 2), output_size=tuple(x.shape[-2:]))


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_transposed_upsampling_to_a_skips_size_exports_under_torch_export(tmp_path: Path, kernel_size: int) -> None:
    pytest.importorskip("onnxscript")
    module = _UpToSkip(kernel_size).eval()
    # kernel 3 (padding 1) reaches 2n - 1 or 2n from n, so only even sides; kernels 2 and 4 reach 2n or 2n + 1
    sizes = [(16, 24), (14, 30), (8, 4)] if kernel_size == 3 else [(16, 24), (13, 29), (7, 4), (41, 18)]
    _onnx_runs(module, tmp_path / "up.onnx", torch.randn(1, 3, 16, 24), sizes, exporter="dynamo")


class _UpNormed(_UpToSkip):  # LinkNet's decoder step: the transposed convolution, then batch norm and ReLU
    def __init__(self) -> None:
        super().__init__(3)
        self.norm = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


def test_batch_norms_after_transposed_convolutions_are_folded_before_torch_export(tmp_path: Path) -> None:
    """Else torch.export's crop between them keeps ONNX Runtime from fusing them and int8 quantizes the batch
    norm on its own; the graph must still equal the unfolded eager module."""
    pytest.importorskip("onnxscript")
    module = _with_random_statistics(_UpNormed())
    _onnx_runs(module, tmp_path / "normed.onnx", torch.randn(1, 3, 16, 24), [(16, 24), (14, 30), (8, 4)],
               exporter="dynamo")
    kinds = {node.op_type for node in onnx.load(str(tmp_path / "normed.onnx")).graph.node}
    assert "ConvTranspose" in kinds and "BatchNormalization" not in kinds
    assert isinstance(module.norm[0], nn.BatchNorm2d)  # the module itself is left as it was


def test_a_timm_encoder_unet_exports_through_torch_export_at_any_size(tmp_path: Path) -> None:
    """Which decoder step has a skip is decided when the model is built: a comparison of traced sizes in
    forward() was a data-dependent guard that made torch.export fail and the export fall back to TorchScript."""
    pytest.importorskip("onnxscript")
    model = _with_random_statistics(pixelseg.create_model("unet", num_classes=3, encoder="test_resnet"))
    report = export_onnx(model, tmp_path / "unet.onnx", in_channels=3, check_sizes=((97, 45), (32, 33)))
    assert report.exporter == "dynamo" and not report.notes


def test_hmsa_rescaled_size_rounds_half_to_even_like_python_in_integer_arithmetic() -> None:
    for scale in (0.25, 0.5, 0.75, 1.5, 2.0, 1 / 3):
        assert [_rounded_product(side, scale) for side in range(1, 600)] == \
            [max(1, round(side * scale)) for side in range(1, 600)], scale


class _PythonRound(nn.Module):  # HMSA's former rescaling: builtins.round of a size has no torch.export ONNX form
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            size = [torch.round(side.double() * 0.5).long() for side in x.shape[-2:]]
        else:
            size = [round(side * 0.5) for side in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@USES_TORCHSCRIPT  # the fallback this test is about
def test_a_model_torch_export_cannot_convert_falls_back_to_torchscript_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    report = export_onnx(_PythonRound(), tmp_path / "round.onnx", in_channels=3, name="round")
    assert report.exporter == "torchscript"
    assert "torch.export failed, TorchScript used" in report.notes[0] and "round" in report.notes[0], report.notes
    assert "\n" not in report.notes[0]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # the TorchScript exporter's tracer, on purpose
def test_pad_to_multiple_traces_its_pad_even_at_a_multiple() -> None:
    class Padded(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            padded, size = pad_to_multiple(x, 8)
            return crop_to(padded.cumsum(-1).cumsum(-2).flip(-1, -2), size)  # depends on the padded size

    traced = torch.jit.trace(Padded(), torch.randn(1, 1, 16, 24))  # a multiple: eager would not pad
    for size in ((16, 24), (13, 29), (1, 7)):
        images = torch.randn(1, 1, *size)
        assert torch.equal(traced(images), Padded()(images)), size


def _with_random_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0, 0.2, generator=generator)
    return model.eval()


@torch.inference_mode()
def test_batchnorm_folding_removes_every_conv_bn_pair_and_keeps_the_logits() -> None:
    model = _with_random_statistics(pixelseg.create_model("unet", num_classes=3, encoder="resnet18"))
    images = torch.randn(2, 3, 64, 96)
    expected = model(images)
    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded, images[:1, :, :32, :32])
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # resnet18: 20 conv+bn pairs; decoder: 2 per block. Only the batch norms after ConvTranspose2d? none.
    assert count == batch_norms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(images), expected, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_optimized_model_equals_eager_and_keeps_the_valid_geometry() -> None:
    model = pixelseg.create_model("unet", num_classes=2, in_channels=1, base_channels=4, depth=2,
                                  batch_norm=True)
    model = _with_random_statistics(model)
    example = torch.randn(1, 1, *sample_size(model, 24))
    fast = optimize_for_inference(model, example)
    assert fast.input_size_for((24, 24)) == model.input_size_for((24, 24))
    images = torch.randn(2, 1, *sample_size(model, 40))
    assert torch.allclose(fast(images), model(images), atol=1e-5, rtol=0)


@USES_TORCHSCRIPT  # --opset 10 is below torch.export's 18
def test_export_command_writes_a_checked_graph_and_refuses_in_one_line(tmp_path: Path) -> None:
    model = pixelseg.create_model("deeplabv3plus", num_classes=3, encoder="test_resnet")
    model.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(cli.app, ["export", str(tmp_path / "model"), "--format", "onnx",
                                          "--out", str(tmp_path / "model.onnx")])
    assert result.exit_code == 0, result.output
    assert f"opset {OPSET}" in result.output
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    metadata = json.loads(metadata_path(tmp_path / "model.onnx").read_text())
    assert metadata["precision"] == "fp32" and metadata["opset"] == OPSET and set(metadata["max_abs_diff"]) == \
        {"64x96", "97x45"}
    # Padding to a multiple of the stride at a traced size needs opset 11's dynamic Pad: refused below it.
    pixelseg.create_model("unetplusplus", num_classes=3, **SMALL["unetplusplus"]).save_pretrained(tmp_path / "pp")
    result = CliRunner().invoke(cli.app, ["export", str(tmp_path / "pp"), "--out", str(tmp_path / "pp.onnx"),
                                          "--opset", "10"])
    assert result.exit_code == 2 and "cannot export 'unetplusplus'" in result.output and "Pad" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "pp.onnx").exists()
    result = CliRunner().invoke(cli.app, ["export", str(tmp_path / "model"), "--format", "tflite",
                                          "--out", str(tmp_path / "m.tflite")])
    assert result.exit_code == 2 and "unknown export format 'tflite'" in result.output


def test_export_refuses_an_instance_model_before_tracing_it(tmp_path: Path) -> None:
    model = pixelseg.create_model("mask_rcnn", num_classes=2, backbone="mobilenet_v3_large", width_mult=0.35,
                                  fpn_channels=8, representation_size=16, mask_head_channels=4)
    model.pixelseg_config["task"] = "instance"
    model.save_pretrained(tmp_path / "detector")
    with pytest.raises(PixelsegError, match="this is an instance model") as caught:
        export_model_dir(tmp_path / "detector", tmp_path / "detector.onnx")
    assert "\n" not in str(caught.value) and not (tmp_path / "detector.onnx").exists()


@USES_TORCHSCRIPT  # the TorchScript exporter without onnxscript
def test_without_onnxscript_the_torchscript_exporter_writes_the_graph(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "dynamo_available", lambda: False)
    model = pixelseg.create_model("unet", num_classes=2, base_channels=4, depth=2).eval()
    assert export_onnx(model, tmp_path / "u.onnx", in_channels=3).exporter == "torchscript"
    with pytest.raises(PixelsegError, match="needs onnxscript"):
        export_onnx(model, tmp_path / "d.onnx", in_channels=3, exporter="dynamo")
