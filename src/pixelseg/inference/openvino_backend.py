"""OpenVINO as an optional CPU runtime for the graphs of ``pixelseg export`` (``pip install pixelseg[openvino]``).

OpenVINO reads the ONNX graph as written — float32, or the int8 QDQ graph of ``inference.quantize``, which its
CPU plugin runs on int8 kernels — and runs a float32 graph in bf16 when asked (``INFERENCE_PRECISION_HINT``).
The graph keeps its dynamic batch, height and width: it is compiled once with dynamic shapes, so any input
size runs, as on ONNX Runtime. A graph the CPU plugin cannot compile (it has no kernel for some QDQ patterns,
e.g. LinkNet's) is refused in one line that names the model and the fallback, ``--backend onnxruntime``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from .tiling import has_valid_convolutions

OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": None}  # int8: the QDQ graph's own precision
INSTALL_HINT = "pip install 'pixelseg[openvino]'"


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def require_openvino() -> None:
    """Refuse, in one line, a request for OpenVINO where it is not installed."""
    if not openvino_available():
        raise PixelsegError(f"--backend openvino needs OpenVINO, which is not installed ({INSTALL_HINT}); "
                            "--backend onnxruntime runs the same graph")


def _reason(error: BaseException) -> str:
    """OpenVINO's messages span many lines (a source location first): the most telling one, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))] or lines or [""]
    return useful[-1][:200]


class OpenVinoModel:
    """An ONNX graph compiled by OpenVINO for the CPU, called like the eager model (tensor in, logits out).

    ``precision``: ``fp32`` or ``bf16`` (a float32 graph run at that inference precision) or ``int8`` (the
    QDQ graph as quantized). ``geometry`` (the eager model) lends its ``input_size_for`` to a
    valid-convolution graph, as for ``export.OnnxRuntimeModel``.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, geometry: nn.Module | None = None,
                 precision: str = "fp32", name: str = "model") -> None:
        require_openvino()
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise PixelsegError(f"unknown OpenVINO precision '{precision}' (choose one of: "
                                f"{', '.join(OPENVINO_PRECISIONS)})")
        self.name, self.precision = name, precision
        properties: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        if OPENVINO_PRECISIONS[precision]:
            properties["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISIONS[precision]
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", properties)
        except Exception as error:  # OpenVINO's own exception types
            raise PixelsegError(f"OpenVINO cannot compile the {precision} graph of '{name}' ({_reason(error)}); "
                                "--backend onnxruntime runs it", path) from None
        self.output = self.compiled.output(0)
        if geometry is not None and has_valid_convolutions(geometry):
            self.input_size_for = geometry.input_size_for

    def __call__(self, images: Tensor) -> Tensor:
        try:
            result = self.compiled(images.detach().float().cpu().contiguous().numpy())
        except Exception as error:  # e.g. a size its shape inference refuses
            raise PixelsegError(f"OpenVINO failed on '{self.name}' at {tuple(images.shape)} ({_reason(error)}); "
                                "--backend onnxruntime runs the same graph") from None
        return torch.from_numpy(result[self.output].copy())
