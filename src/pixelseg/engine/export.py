"""``pixelseg export``: a saved model to ONNX (dynamic batch, height and width), and an ONNX Runtime backend.

The graph is traced by PyTorch's TorchScript-based ONNX exporter at opset :data:`OPSET`, checked with
``onnx.checker``, then run by ONNX Runtime at a second, odd image size and compared with eager PyTorch:
an export whose graph froze a shape-dependent branch (and so only works at the traced size) is refused
with the measured difference, never written. A model that cannot be exported (a 3-D network, a CPU-only
post-processing step such as a dense CRF, an operator ONNX lacks) is refused in one line saying why.

While tracing, :func:`~pixelseg.models.blocks.pad_to_multiple` always emits its ``Pad`` node (with zero
widths when the size is already a multiple); its eager version skips the pad for such sizes, a Python
branch the tracer would otherwise record as a constant.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PixelsegError
from ..models import blocks
from ..models.base import main_logits
from ..models.registry import from_pretrained
from .evaluate import resolve_model_dir
from .tiling import has_valid_convolutions

OPSET = 17
INPUT, OUTPUT = "images", "logits"
FORMATS = ("onnx",)


@dataclass
class ExportReport:
    path: Path
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "HxW" -> max |ONNX Runtime - eager|


class _Logits(nn.Module):
    """The model's main logits only (auxiliary outputs are training-time)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return main_logits(self.model(images))


def _pad_to_multiple_always(x: Tensor, multiple: int, mode: str = "constant") -> tuple[Tensor, tuple[int, int]]:
    height, width = x.shape[-2:]
    return F.pad(x, (0, (-width) % multiple, 0, (-height) % multiple), mode=mode), (height, width)


@contextmanager
def traceable_padding() -> Iterator[None]:
    """Swap ``pad_to_multiple`` for an always-padding twin in every model module, for the tracer."""
    patched = [module for name, module in list(sys.modules.items())
               if name.startswith("pixelseg.models") and getattr(module, "pad_to_multiple", None) is
               blocks.pad_to_multiple]
    for module in patched:
        module.pad_to_multiple = _pad_to_multiple_always
    try:
        yield
    finally:
        for module in patched:
            module.pad_to_multiple = blocks.pad_to_multiple


@contextmanager
def _silenced() -> Iterator[None]:
    """Mute file descriptors 1 and 2: the TorchScript exporter dumps its whole IR graph when it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def sample_size(model: nn.Module, side: int) -> tuple[int, int]:
    """An input size the model accepts: ``side`` x ``1.5 side`` (or what a valid-convolution net needs for
    that output). Not square, so that the tracer cannot mistake a height for a width."""
    size = (side, side + side // 2)
    if has_valid_convolutions(model):
        size, _ = model.input_size_for(size)
    return int(size[0]), int(size[1])


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def export_onnx(model: nn.Module, out: str | Path, *, in_channels: int, opset: int = OPSET, side: int = 64,
                check_sizes: tuple[tuple[int, int], ...] = ((97, 45),), atol: float = 1e-4,
                name: str = "model") -> ExportReport:
    """Export ``model`` to ``out``, verified with ONNX Runtime against eager at ``check_sizes``: the largest
    difference must stay within ``atol`` times the largest logit (at least 1)."""
    import onnx

    out = Path(out)
    model = model.eval()
    wrapped = _Logits(model).eval()
    sample = torch.randn(1, in_channels, *sample_size(model, side))
    partial = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: "batch", 2: "height", 3: "width"}
    try:
        with traceable_padding(), warnings.catch_warnings(), torch.no_grad(), _silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (sample,), str(partial), dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=[OUTPUT], dynamic_axes={INPUT: dims, OUTPUT: dims})
        onnx.checker.check_model(str(partial))
    except Exception as error:  # the exporter raises many types; the user gets one line
        partial.unlink(missing_ok=True)
        raise PixelsegError(f"cannot export '{name}' to ONNX: {_one_line(error)}") from None
    report = ExportReport(out, opset)
    try:
        runner = OnnxRuntimeModel(partial)
        sizes = [tuple(sample.shape[-2:])] + [sample_size(model, min(s)) if has_valid_convolutions(model) else s
                                              for s in check_sizes]
        for size in sizes:
            images = torch.randn(2, in_channels, *size)
            with torch.no_grad():
                expected = wrapped(images)
            got = runner(images)
            diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
            report.max_abs_diff[f"{size[0]}x{size[1]}"] = diff
            if not diff <= atol * max(1.0, float(expected.abs().max())):  # float32 error grows with the logits
                raise PixelsegError(f"cannot export '{name}' to ONNX: at {size[0]}x{size[1]} ONNX Runtime differs "
                                    f"from PyTorch by {diff:.3g} (a shape-dependent Python branch was traced as "
                                    "a constant)")
    except PixelsegError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as error:  # ONNX Runtime rejects a graph at run time
        partial.unlink(missing_ok=True)
        raise PixelsegError(f"cannot export '{name}' to ONNX: ONNX Runtime fails ({_one_line(error)})") from None
    os.replace(partial, out)
    return report


def export_model_dir(model_path: str | Path, out: str | Path, *, format: str = "onnx",
                     opset: int = OPSET) -> ExportReport:
    """``pixelseg export``: the saved model in ``model_path`` (model or run directory) to ``out``."""
    if format not in FORMATS:
        raise PixelsegError(f"unknown export format '{format}' (supported: {', '.join(FORMATS)})")
    model_dir = resolve_model_dir(model_path)
    model = from_pretrained(model_dir)
    return export_onnx(model, out, in_channels=model.pixelseg_config.get("in_channels", 3), opset=opset,
                       name=model.pixelseg_config.get("name", str(model_dir)))


class OnnxRuntimeModel:
    """An exported graph run by ONNX Runtime: called like the eager model (tensor in, logits out).

    ``geometry`` (the eager model) lends its ``input_size_for`` to a valid-convolution graph, so that
    whole-image and overlap-tile inference mirror-pad for it exactly as for the eager model.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, geometry: nn.Module | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types
            raise PixelsegError(f"ONNX Runtime cannot load the graph ({_one_line(error)})", path) from None
        if geometry is not None and has_valid_convolutions(geometry):
            self.input_size_for = geometry.input_size_for

    def __call__(self, images: Tensor) -> Tensor:
        (logits,) = self.session.run([OUTPUT], {INPUT: images.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(logits)
