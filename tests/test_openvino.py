"""OpenVINO as an optional backend (issue 18): the exported graph (fp32, int8 QDQ, fp32 at bf16) on OpenVINO at
any input size, the CPU times ``pixelseg export`` records for ``--backend auto``, and the one-line refusals.
Tests that run OpenVINO skip when it is not installed (``pip install 'pixelseg[openvino]'``)."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import predicted_labels
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

import pixelseg
from pixelseg import cli
from pixelseg.data.build import build_data
from pixelseg.data.config import DataConfig
from pixelseg.errors import PixelsegError
from pixelseg.inference import openvino_backend
from pixelseg.inference.export import OnnxRuntimeModel, export_onnx, metadata_path, within_float32_error
from pixelseg.inference.quantize import export_with_precision
from pixelseg.inference.runner import InferenceOptions, build_runner
from pixelseg.io.config import build_typed


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny same-padded U-Net (random weights) saved with its Shapes data config, as ``pixelseg train`` saves
    it: enough for calibration and the gate (the tests pass --accept-drop: it is untrained)."""
    torch.manual_seed(0)
    config = build_typed(DataConfig, {"name": "shapes", "num_samples": 8, "val_samples": 2, "image_size": 48,
                                      "batch_size": 4}, "data")
    data = build_data(config)
    model = pixelseg.create_model("unet", num_classes=data.info.num_classes, in_channels=data.info.in_channels,
                                  padding="same", base_channels=8, depth=2, batch_norm=True).eval()
    model.pixelseg_config.update(task="semantic", data={**asdict(data.info), "dataset": asdict(config)})
    return model.save_pretrained(tmp_path_factory.mktemp("openvino") / "model")


def _model(saved: Path) -> torch.nn.Module:
    return pixelseg.models.pretrained.from_pretrained(saved).eval()


@pytest.fixture(scope="module")
def fp32_graph(saved: Path) -> Path:
    """The float32 graph next to the saved model, where ``pixelseg predict`` looks for it."""
    return export_onnx(_model(saved), saved / "model.onnx", in_channels=3).path


def test_openvino_runs_the_fp32_graph_at_sizes_it_never_saw_within_float32_error(saved: Path,
                                                                                fp32_graph: Path) -> None:
    pytest.importorskip("openvino")
    model = _model(saved)
    runner = openvino_backend.OpenVinoModel(fp32_graph, threads=1, name="unet")
    for size in ((48, 64), (37, 83), (16, 16)):  # one compiled model, dynamic shapes
        images = torch.randn(2, 3, *size)
        with torch.inference_mode():
            expected, exact = model(images), copy.deepcopy(model).double()(images.double())
        check = within_float32_error(runner(images), expected, exact)
        assert check.passed, (size, check.line())


def test_bf16_hint_runs_the_float32_graph_in_bfloat16(saved: Path, fp32_graph: Path) -> None:
    ov = pytest.importorskip("openvino")
    model = _model(saved)
    fp32 = openvino_backend.OpenVinoModel(fp32_graph, threads=1)
    bf16 = openvino_backend.OpenVinoModel(fp32_graph, threads=1, precision="bf16")
    assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    images = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        expected = model(images)
    error_bf16, error_fp32 = (float((run(images) - expected).abs().max()) for run in (bf16, fp32))
    # bfloat16 keeps 8 bits of mantissa: its error is far above float32's, yet small against the logits
    assert error_fp32 < 1e-4 < error_bf16 < 0.1 * float(expected.abs().max())


def test_int8_export_records_both_runtimes_cpu_time_and_auto_runs_the_recorded_fastest(saved: Path,
                                                                                       tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    saved = Path(shutil.copytree(saved, tmp_path / "model"))
    graph = saved / "model.int8.onnx"
    report = export_with_precision(saved, graph, precision="int8", calibration=2, accept_drop=True)
    metadata = json.loads(metadata_path(graph).read_text())
    seconds = metadata["cpu_seconds_per_image"]
    assert set(seconds) == {"onnxruntime", "openvino"} and all(value > 0 for value in seconds.values())
    assert metadata["fastest"] == min(seconds, key=seconds.__getitem__) == report.fastest
    assert metadata["precision"] == "int8" and metadata["calibration_images"] == 2
    assert {gate["backend"] for gate in metadata["gates"]} == {"onnxruntime", "openvino"}
    model = _model(saved)
    kinds = {"onnxruntime": OnnxRuntimeModel, "openvino": openvino_backend.OpenVinoModel}
    runner = build_runner(model, saved, InferenceOptions(precision="int8", backend="auto"))
    assert isinstance(runner, kinds[metadata["fastest"]])
    # auto follows the metadata, not a fresh timing: name the other runtime and it runs that one
    other = next(name for name in kinds if name != metadata["fastest"])
    metadata_path(graph).write_text(json.dumps({**metadata, "fastest": other}))
    runner = build_runner(model, saved, InferenceOptions(precision="int8"))  # int8's default backend is auto
    assert isinstance(runner, kinds[other])
    images = torch.randn(1, 3, 40, 56)
    labels = [build_runner(model, saved, InferenceOptions(precision="int8", backend=name))(images).argmax(1)
              for name in kinds]
    assert labels[0].shape == (1, 40, 56) and float((labels[0] == labels[1]).double().mean()) > 0.9


def test_predict_with_openvino_writes_the_labels_of_eager_pytorch(saved: Path, fp32_graph: Path,
                                                                  tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    image = (np.random.default_rng(0).random((45, 61, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    labels = {backend: predicted_labels(tmp_path / "in.png", saved, tmp_path / backend, "--backend", backend)
              for backend in ("torch", "openvino", "auto")}
    assert (labels["openvino"] == labels["torch"]).mean() > 0.999
    assert (labels["auto"] == labels["torch"]).mean() > 0.999


def test_a_graph_openvino_cannot_compile_is_refused_naming_the_model_and_the_fallback(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    node = helper.make_node("NoSuchOperator", ["images"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(PixelsegError) as caught:
        openvino_backend.OpenVinoModel(tmp_path / "odd.onnx", name="linknet", precision="int8")
    message = str(caught.value)
    assert "OpenVINO cannot compile the int8 graph of 'linknet'" in message
    assert "--backend onnxruntime" in message and "\n" not in message


def test_backend_openvino_without_openvino_is_refused_in_one_line(saved: Path, fp32_graph: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)
    with pytest.raises(PixelsegError, match=r"needs OpenVINO, which is not installed \(pip install"):
        InferenceOptions(backend="openvino").check()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in.png")
    result = CliRunner().invoke(cli.app, ["predict", str(tmp_path / "in.png"), "--model", str(saved),
                                          "--out", str(tmp_path / "out"), "--backend", "openvino"])
    assert result.exit_code == 2 and result.output.startswith("error:") and "needs OpenVINO" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # auto without OpenVINO: ONNX Runtime alone, no timing needed
    runner = build_runner(_model(saved), saved, InferenceOptions(backend="auto"))
    assert isinstance(runner, OnnxRuntimeModel)


def test_backend_options_are_checked_in_one_line() -> None:
    with pytest.raises(PixelsegError, match="ONNX Runtime has no bf16 CPU kernels"):
        InferenceOptions(precision="bf16", backend="onnxruntime").check()
    with pytest.raises(PixelsegError, match="--optimize/--compile apply to the torch backend"):
        InferenceOptions(backend="auto", optimize=True).check()
    assert InferenceOptions(precision="int8").runtime == "auto"
    assert InferenceOptions(precision="fp32").runtime == "torch"


def test_fp32_export_is_timed_on_the_training_images_when_at_hand_else_on_random_ones(saved: Path,
                                                                                    tmp_path: Path) -> None:
    """So that an fp32 export's timings compare with its bf16 and int8 exports' (same images)."""
    pytest.importorskip("openvino")
    with_data = Path(shutil.copytree(saved, tmp_path / "with_data"))
    export_with_precision(with_data, with_data / "model.onnx", precision="fp32", calibration=3)
    assert json.loads(metadata_path(with_data / "model.onnx").read_text())["timed_on"].startswith("3 train image")
    without = Path(shutil.copytree(saved, tmp_path / "without"))
    config = json.loads((without / "config.json").read_text())
    config["data"]["dataset"] = {**config["data"]["dataset"], "name": "folder", "root": str(tmp_path / "gone")}
    (without / "config.json").write_text(json.dumps(config))
    export_with_precision(without, without / "model.onnx", precision="fp32")
    assert json.loads(metadata_path(without / "model.onnx").read_text())["timed_on"].startswith("2 random image")
