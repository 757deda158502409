"""``pixelseg export``: a saved model to ONNX (dynamic batch, height and width), and an ONNX Runtime backend.

The graph is written at opset :data:`OPSET` by PyTorch's ``torch.export``-based ONNX exporter (with
``onnxscript`` installed; the axes are ``Dim.DYNAMIC``), else by the TorchScript-based one (deprecated since
PyTorch 2.9), checked with ``onnx.checker``, then run by ONNX Runtime at a second, odd image size and
compared with the same graph run in float64 (:func:`within_float32_error`: ONNX Runtime's error may be at
most twice eager float32's own error against float64, with at least 99.99% of the labels equal): an export
whose graph froze a shape-dependent branch (and so only works at the traced size) is refused with the
measured difference, never written; ``exporter="auto"`` then tries the TorchScript exporter. A model that
cannot be exported (a CPU-only post-processing step such as a dense CRF, an operator ONNX lacks, an opset too
old for a dynamic pad) is refused in one line saying why.

For the TorchScript exporter two operators get their own ONNX translation here (registered for the export
only), because its own cannot work at a height and width unknown when tracing (under ``torch.export`` the
models' code is traced with symbolic sizes instead: ``models.modules.context.adaptive_avg_pool2d``):

* ``max_unpool2d`` (SegNet, DeconvNet): ``ScatterElements`` of each (batch, channel) plane's values to
  the flat positions PyTorch's pooling indices name, into zeros of the traced output size (the model
  must hand the exporter the operator itself: ``F.max_unpool2d``'s Python check of the output size
  cannot run on traced sizes);
* ``adaptive_avg_pool2d`` with more than one bin (PSPNet's 2x2, 3x3 and 6x6 pyramid): bin ``i`` of
  ``n`` over a side ``L`` spans ``floor(i L / n)`` to ``ceil((i + 1) L / n)``, PyTorch's definition,
  computed from the runtime shape; each bin is a ``ReduceMean`` over its rows, then its columns.

Volumes (a model built from ``Conv3d``, V-Net) export with dynamic depth, height and width.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from ..io.checkpoint import atomic_write_bytes
from ..io.saved_model import resolve_model_dir
from ..models.base import main_logits
from ..models.pretrained import from_pretrained
from .tiling import has_valid_convolutions

OPSET = 18  # the torch.export-based exporter's lowest (and the TorchScript one's translations work at it)
INPUT, OUTPUT = "images", "logits"
FORMATS = ("onnx",)


@dataclass
class ExportReport:
    path: Path
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "HxW" ("DxHxW") -> max |ONNX Runtime - eager|
    precision: str = "fp32"
    exporter: str = "torchscript"  # "dynamo" (torch.export) or "torchscript"
    notes: list[str] = field(default_factory=list)  # e.g. the accuracy gate's measurement (inference.quantize)
    # Runtime -> process CPU seconds per image at 1 thread (``pixelseg export``: ONNX Runtime, OpenVINO, eager bf16)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    fastest: str = ""  # the fastest of ``cpu_seconds`` (what ``--backend auto`` runs)
    metadata: dict[str, object] = field(default_factory=dict)  # more facts for the JSON metadata (gates, timing)

    def to_json(self) -> dict[str, object]:
        return {"graph": self.path.name, "precision": self.precision, "opset": self.opset, "exporter": self.exporter,
                "max_abs_diff": self.max_abs_diff, "cpu_seconds_per_image": self.cpu_seconds,
                "fastest": self.fastest, **self.metadata, "notes": self.notes}


def metadata_path(graph: str | Path) -> Path:
    """The JSON metadata that ``pixelseg export`` writes next to a graph: ``model.int8.onnx.json``."""
    graph = Path(graph)
    return graph.with_name(graph.name + ".json")


def write_metadata(report: ExportReport) -> Path:
    """Write ``report`` as the graph's JSON metadata (atomically)."""
    target = metadata_path(report.path)
    atomic_write_bytes(target, (json.dumps(report.to_json(), indent=2) + "\n").encode())
    return target


def read_metadata(graph: str | Path) -> dict:
    """The JSON metadata of ``graph`` (``{}`` when there is none); a damaged file is refused in one line."""
    path = metadata_path(graph)
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise PixelsegError(f"unreadable export metadata ({error}); delete it or export again", path) from None
    if not isinstance(metadata, dict):
        raise PixelsegError("export metadata is not a JSON object; delete it or export again", path)
    return metadata


@dataclass
class Float32Check:
    """A float32 path against the same graph in float64, next to eager float32's own error."""

    error: float  # max |path - float64|
    own_error: float  # max |eager float32 - float64|
    labels: float  # fraction of pixels whose argmax equals float64's
    own_labels: float  # the same for eager float32
    scale: float  # max |float64 logit|

    @property
    def allowed(self) -> float:
        """Twice eager float32's own error, and never below one float32 step of the largest logit."""
        return 2 * self.own_error + float(torch.finfo(torch.float32).eps) * max(1.0, self.scale)

    @property
    def passed(self) -> bool:
        return self.error <= self.allowed and self.labels >= min(0.9999, self.own_labels)

    def line(self) -> str:
        return (f"max |path - float64| {self.error:.3g} (allowed {self.allowed:.3g}: 2x eager float32's "
                f"{self.own_error:.3g}), labels equal {100 * self.labels:.3f}%")


def within_float32_error(path: Tensor, fp32: Tensor, exact: Tensor) -> Float32Check:
    """The equality rule for float32 paths: compare ``path`` (e.g. ONNX Runtime's logits) and ``fp32`` (the
    eager float32 model's) with ``exact`` (the same graph in float64). ``passed``: the path's largest error is
    at most twice float32's own, and at least 99.99% of its labels (or as many as eager float32's, if fewer)
    equal float64's."""
    exact = exact.double()
    if path.shape != exact.shape:
        return Float32Check(float("inf"), float((fp32.double() - exact).abs().max()), 0.0, 1.0, 1.0)
    labels = exact.argmax(1)
    return Float32Check(error=float((path.double() - exact).abs().max()),
                        own_error=float((fp32.double() - exact).abs().max()),
                        labels=float((path.argmax(1) == labels).double().mean()),
                        own_labels=float((fp32.argmax(1) == labels).double().mean()),
                        scale=float(exact.abs().max()))


def _float64_logits(model: nn.Module, images: Tensor) -> Tensor | None:
    """``model`` run in float64 on ``images``, or ``None`` for a model that cannot run in float64 (a float32
    constant made in its forward)."""
    try:
        with torch.no_grad():
            return copy.deepcopy(model).double().eval()(images.double())
    except (RuntimeError, TypeError):
        return None


class _Logits(nn.Module):
    """The model's main logits only (auxiliary outputs are training-time)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return main_logits(self.model(images))


def _spatial_dims(model: nn.Module) -> int:
    """3 for a volumetric network (its convolutions are ``Conv3d``), else 2."""
    kinds = {type(m) for m in model.modules()}
    return 3 if kinds & {nn.Conv3d, nn.ConvTranspose3d} and not kinds & {nn.Conv2d, nn.ConvTranspose2d} else 2


# ONNX translations below: ``g`` is the TorchScript exporter's graph context, the other arguments are values
# of its graph (tensors, or packed lists of ints).


def _to_1d(g, values):
    """A packed list of (traced or constant) ints as one int64 1-D tensor."""
    from torch.onnx import symbolic_helper

    if symbolic_helper._is_packed_list(values):
        parts = [symbolic_helper._unsqueeze_helper(g, g.op("Cast", v, to_i=7), [0])  # 7: INT64
                 for v in symbolic_helper._unpack_list(values)]
        return g.op("Concat", *parts, axis_i=0)
    return g.op("Constant", value_t=torch.tensor(symbolic_helper._maybe_get_const(values, "is"), dtype=torch.long))


def _dim(g, x, axis: int):
    """``x.shape[axis]`` as a 1-element int64 tensor."""
    return g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([axis])),
                g.op("Constant", value_t=torch.tensor([axis + 1])))


def _max_unpool2d(g, x, indices, output_size):
    """``F.max_unpool2d``: every value scattered to its plane-flat index, zeros elsewhere."""
    keep_planes = g.op("Constant", value_t=torch.tensor([0, 0, -1]))
    planes = g.op("Concat", _dim(g, x, 0), _dim(g, x, 1), axis_i=0)
    height_width = _to_1d(g, output_size)
    area = g.op("ReduceProd", height_width, keepdims_i=1)
    zeros = g.op("ConstantOfShape", g.op("Concat", planes, area, axis_i=0), value_t=torch.zeros(1))
    scattered = g.op("ScatterElements", zeros, g.op("Reshape", indices, keep_planes),
                     g.op("Reshape", x, keep_planes), axis_i=2)
    return g.op("Reshape", scattered, g.op("Concat", planes, height_width, axis_i=0))


def _reduce_mean(g, x, axis: int):
    if g.opset >= 18:  # axes became an input
        return g.op("ReduceMean", x, g.op("Constant", value_t=torch.tensor([axis])), keepdims_i=1)
    return g.op("ReduceMean", x, axes_i=[axis], keepdims_i=1)


def _adaptive_avg_pool2d(g, x, output_size):
    """``F.adaptive_avg_pool2d`` for any runtime size: PyTorch's bins, one ``ReduceMean`` each way."""
    from torch.onnx import symbolic_helper

    bins = symbolic_helper._maybe_get_const(output_size, "is")
    bins = [bins, bins] if isinstance(bins, int) else list(bins)
    if bins == [1, 1]:
        return g.op("GlobalAveragePool", x)
    one = g.op("Constant", value_t=torch.tensor([1]))
    for axis, count in ((2, bins[0]), (3, bins[1])):
        length, n = _dim(g, x, axis), g.op("Constant", value_t=torch.tensor([count]))
        means = []
        for i in range(count):  # floor(i L / n) .. ceil((i + 1) L / n)
            start = g.op("Div", g.op("Mul", length, g.op("Constant", value_t=torch.tensor([i]))), n)
            end = g.op("Div", g.op("Add", g.op("Mul", length, g.op("Constant", value_t=torch.tensor([i + 1]))),
                                   g.op("Sub", n, one)), n)
            section = g.op("Slice", x, start, end, g.op("Constant", value_t=torch.tensor([axis])))
            means.append(_reduce_mean(g, section, axis))
        x = g.op("Concat", *means, axis_i=axis)
    return x


_SYMBOLICS = {"aten::max_unpool2d": _max_unpool2d, "aten::adaptive_avg_pool2d": _adaptive_avg_pool2d}


@contextmanager
def _exporter_symbolics(opset: int) -> Iterator[None]:
    """Register this module's ONNX translations for the duration of one export."""
    for name, function in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, function, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


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
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield  # and Python-level prints (torch.export's progress) where sys.stdout is not fd 1
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@torch.no_grad()
def _with_transposed_batchnorms_folded(model: nn.Module, example: Tensor) -> nn.Module:
    """A copy of the eval-mode ``model`` whose batch norms that read a transposed convolution's output are
    folded into it (per output channel: ``w' = w g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``).

    torch.export's graph crops a transposed convolution to its requested size (``output_size``) before the
    batch norm, so ONNX Runtime's pre-processing cannot fuse the two, and int8 quantization would quantize the
    batch norm on its own (LinkNet on ISBI: a 0.49-point mIoU drop instead of 0.04). The check that follows
    compares the graph with the unfolded model."""
    transposed = (nn.ConvTranspose2d, nn.ConvTranspose3d)
    if not any(isinstance(module, transposed) for module in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    produced: dict[int, tuple[nn.Module, Tensor]] = {}  # the output (kept alive, so its id stays unique)
    readers: dict[nn.Module, list[nn.Module]] = {}
    calls: dict[nn.Module, int] = {}

    def after(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        produced[id(output)] = (module, output)
        calls[module] = calls.get(module, 0) + 1

    def before(norm: nn.Module, inputs: tuple) -> None:
        calls[norm] = calls.get(norm, 0) + 1
        if id(inputs[0]) in produced:
            readers.setdefault(produced[id(inputs[0])][0], []).append(norm)

    hooks = [m.register_forward_hook(after) for m in model.modules() if type(m) in transposed]
    hooks += [m.register_forward_pre_hook(before) for m in model.modules()
              if type(m) in (nn.BatchNorm2d, nn.BatchNorm3d)]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for conv, norms in readers.items():
        norm = norms[0]
        if len(norms) > 1 or calls[conv] > 1 or calls[norm] > 1 or conv.groups != 1 or norm.running_var is None:
            continue  # shared or grouped: left as it is
        scale = 1 / torch.sqrt(norm.running_var.double() + norm.eps)
        shift = torch.zeros_like(scale)
        if norm.affine:
            scale, shift = scale * norm.weight.double(), norm.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shape = (1, -1) + (1,) * (conv.weight.dim() - 2)  # a transposed weight is (in, out, *kernel)
        conv.weight.copy_(conv.weight.double() * scale.reshape(shape))
        conv.bias = nn.Parameter(((bias - norm.running_mean.double()) * scale + shift).to(conv.weight.dtype))
        for name, module in model.named_modules():
            if module is norm:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model


def sample_size(model: nn.Module, side: int) -> tuple[int, ...]:
    """An input size the model accepts: ``side`` x ``1.5 side`` (or what a valid-convolution net needs for
    that output); for a volume ``side / 4 + 1`` x ``side / 2 + 1`` x ``side / 2 + 3``. No two sides equal,
    so that the tracer cannot mistake a height for a width."""
    if _spatial_dims(model) == 3:
        return side // 4 + 1, side // 2 + 1, side // 2 + 3
    size = (side, side + side // 2)
    if has_valid_convolutions(model):
        size, _ = model.input_size_for(size)
    return int(size[0]), int(size[1])


def _one_line(error: BaseException) -> str:
    """The error's first line; for torch.onnx's multi-page reports, the cause its summary names."""
    text = [line for line in str(error).strip().splitlines() if line.strip()]
    if "## Exception summary" in text[:-1]:
        text = text[text.index("## Exception summary") + 1:]
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


CHECK_SIZES_2D = ((97, 45),)
CHECK_SIZES_3D = ((21, 16, 27),)  # one side a multiple of V-Net's 16, the others not


EXPORTERS = ("auto", "dynamo", "torchscript")
# Registered models whose torch.export graph fails ONNX conversion, fails in ONNX Runtime at an untraced size,
# freezes a size, or differs from float64 beyond the rule: "auto" sends them straight to the TorchScript
# exporter. None since torch.export traces the size arithmetic of the models' Python code (measured at
# tests/test_export.py's SMALL settings with torch 2.14 and onnxscript 0.7).
TORCHSCRIPT_MODELS: frozenset[str] = frozenset()
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter's lowest implemented opset (it converts down otherwise)
LEGACY_WARNING = "You are using the legacy TorchScript-based ONNX export"  # PyTorch's deprecation warning


def dynamo_available() -> bool:
    """The ``torch.export``-based exporter needs ``onnxscript``."""
    return importlib.util.find_spec("onnxscript") is not None


def _trace(wrapped: nn.Module, sample: Tensor, path: Path, *, exporter: str, opset: int, volumetric: bool) -> None:
    """Write ``wrapped``'s graph with dynamic batch and spatial sizes: ``torch.export`` (``dynamo``) or the
    TorchScript tracer with this module's translations (``torchscript``)."""
    import onnx

    names = ["batch", "depth", "height", "width"] if volumetric else ["batch", "height", "width"]
    axes = [0, 2, 3, 4] if volumetric else [0, 2, 3]
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), _silenced():
        warnings.simplefilter("ignore")  # the exporters' advice on the model's Python code
        if exporter == "dynamo":
            # Named axes are Dim.DYNAMIC: torch.export keeps the guards it cannot prove of the sizes
            # (a broadcast side != 1, a padded side a multiple of the stride) instead of refusing the range
            shapes = (dict(zip(axes, names, strict=True)),)
            quiet = logging.getLogger("torch.onnx")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # its progress lines go to Python's stderr, which _silenced leaves
            try:
                torch.onnx.export(wrapped, (sample,), str(path), dynamo=True, opset_version=opset,
                                  input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=shapes,
                                  external_data=False)
            finally:
                quiet.setLevel(level)
        else:
            # The TorchScript exporter is deprecated (PyTorch 2.9): its warning is kept and raised again below,
            # under the caller's filters, so that what still uses it shows (TORCHSCRIPT_MODELS, a torch.export
            # failure, no onnxscript, an opset below 18).
            warnings.filterwarnings("always", message=LEGACY_WARNING, category=DeprecationWarning)
            dims = dict(zip(axes, names, strict=True))
            with _exporter_symbolics(opset):
                torch.onnx.export(wrapped, (sample,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_axes={INPUT: dims, OUTPUT: dims})
    for warning in caught:
        warnings.warn(str(warning.message), DeprecationWarning, stacklevel=3)
    onnx.checker.check_model(str(path))
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    frozen = [axis for axis in axes if not dims[axis].dim_param]
    if frozen:  # torch.export specialises a size that the model's Python code constrains
        raise PixelsegError(f"the exporter froze input axes {frozen} to the traced size")


def export_onnx(model: nn.Module, out: str | Path, *, in_channels: int, opset: int = OPSET, side: int = 64,
                check_sizes: tuple[tuple[int, ...], ...] | None = None, atol: float = 1e-4,
                name: str = "model", exporter: str = "auto") -> ExportReport:
    """Export ``model`` to ``out``, verified with ONNX Runtime at ``check_sizes`` against the same graph in
    float64 (:func:`within_float32_error`); ``atol`` (times the largest logit, at least 1) bounds the
    difference from eager float32 instead only for a model that cannot run in float64.

    ``exporter``: ``auto`` tries ``torch.export`` (``dynamo``, when ``onnxscript`` is installed, except for
    :data:`TORCHSCRIPT_MODELS`) and falls back to the TorchScript tracer for a model whose ``torch.export``
    graph fails, freezes a size or fails the check; the report's ``exporter`` says which one wrote the file."""
    if exporter not in EXPORTERS:
        raise PixelsegError(f"unknown exporter '{exporter}' (choose one of: {', '.join(EXPORTERS)})")
    if exporter == "dynamo" and not dynamo_available():
        raise PixelsegError("the torch.export-based ONNX exporter needs onnxscript (pip install onnxscript)")
    registered = getattr(model, "pixelseg_config", {}).get("name", name)
    dynamo_first = dynamo_available() and registered not in TORCHSCRIPT_MODELS and opset >= DYNAMO_MIN_OPSET
    tries = ["dynamo", "torchscript"] if exporter == "auto" and dynamo_first else \
        ["torchscript" if exporter == "auto" else exporter]
    out = Path(out)
    failures = []
    for index, attempt in enumerate(tries):
        try:
            report = _export_checked(model, out, in_channels=in_channels, opset=opset, side=side,
                                     check_sizes=check_sizes, atol=atol, name=name, exporter=attempt)
        except PixelsegError as error:
            if index == len(tries) - 1:
                raise
            failures.append(f"{attempt}: {error}")
            continue
        report.notes += [f"torch.export failed, TorchScript used ({failure})" for failure in failures]
        return report
    raise AssertionError("unreachable")


def _export_checked(model: nn.Module, out: Path, *, in_channels: int, opset: int, side: int,
                    check_sizes: tuple[tuple[int, ...], ...] | None, atol: float, name: str,
                    exporter: str) -> ExportReport:
    model = model.eval()
    wrapped = _Logits(model).eval()
    volumetric = _spatial_dims(model) == 3
    if check_sizes is None:
        check_sizes = CHECK_SIZES_3D if volumetric else CHECK_SIZES_2D
    # torch.export specialises a size of 1 (and so the batch of a single image): it traces two
    sample = torch.randn(2 if exporter == "dynamo" else 1, in_channels, *sample_size(model, side))
    partial = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise PixelsegError(f"the torch.export-based ONNX exporter writes opset {DYNAMO_MIN_OPSET} or later, not "
                            f"{opset} (the TorchScript exporter writes older ones)")
    traced = _Logits(_with_transposed_batchnorms_folded(model, sample)).eval() if exporter == "dynamo" else wrapped
    try:
        _trace(traced, sample, partial, exporter=exporter, opset=opset, volumetric=volumetric)
    except Exception as error:  # the exporter raises many types; the user gets one line
        partial.unlink(missing_ok=True)
        raise PixelsegError(f"cannot export '{name}' to ONNX: {_one_line(error)}") from None
    report = ExportReport(out, opset, exporter=exporter)
    try:
        runner = OnnxRuntimeModel(partial)
        sizes = [tuple(sample.shape[2:])] + [sample_size(model, min(s)) if has_valid_convolutions(model) else s
                                              for s in check_sizes]
        for size in sizes:
            images = torch.randn(2, in_channels, *size)
            with torch.no_grad():
                expected = wrapped(images)
            got = runner(images)
            diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
            shown = "x".join(str(side) for side in size)
            report.max_abs_diff[shown] = diff
            exact = _float64_logits(wrapped, images)
            if exact is not None:
                check = within_float32_error(got, expected, exact)
                passed, why = check.passed, check.line()
            else:  # float32 error grows with the logits
                passed = diff <= atol * max(1.0, float(expected.abs().max()))
                why = f"allowed {atol:g} x the largest logit; the model does not run in float64"
            if not passed:
                raise PixelsegError(f"cannot export '{name}' to ONNX: at {shown} ONNX Runtime differs "
                                    f"from PyTorch by {diff:.3g} ({why}; a shape-dependent Python branch traced "
                                    "as a constant?)")
    except PixelsegError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as error:  # ONNX Runtime rejects a graph at run time
        partial.unlink(missing_ok=True)
        raise PixelsegError(f"cannot export '{name}' to ONNX: ONNX Runtime fails ({_one_line(error)})") from None
    os.replace(partial, out)
    return report


def load_exportable(model_path: str | Path) -> tuple[Path, nn.Module]:
    """The saved model in ``model_path`` (model or run directory), refused if its outputs are not logits."""
    model_dir = resolve_model_dir(model_path)
    model = from_pretrained(model_dir).eval()
    task = model.pixelseg_config.get("task")
    if task not in (None, "semantic", "volumetric"):
        raise PixelsegError(f"export writes image-to-logits graphs of semantic and volumetric models; this is "
                            f"{'an' if task[0] in 'aeiou' else 'a'} {task} model (its detector returns per-image lists of instances)", model_dir)
    return model_dir, model


def export_model_dir(model_path: str | Path, out: str | Path, *, format: str = "onnx",
                     opset: int = OPSET) -> ExportReport:
    """``pixelseg export``: the saved model in ``model_path`` (model or run directory) to ``out`` (float32;
    ``inference.quantize.export_with_precision`` for bf16 and int8)."""
    if format not in FORMATS:
        raise PixelsegError(f"unknown export format '{format}' (supported: {', '.join(FORMATS)})")
    model_dir, model = load_exportable(model_path)
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
