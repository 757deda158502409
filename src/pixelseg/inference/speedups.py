"""Eager-mode inference speed-ups that keep the outputs equal (checked on an example batch).

* **BatchNorm folding**: a ``Conv2d`` whose output goes straight into a ``BatchNorm2d`` absorbs it in eval
  mode, ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``, and the batch norm
  becomes the identity. Pairs are found by running the model once with hooks (a conv's output tensor
  being the batch norm's input), so it works for any architecture, not just ``nn.Sequential`` stacks.
* **channels_last** memory format (NHWC), which oneDNN convolutions often run faster on CPU, but not
  always: on the shared AVX2 CPU it made smp's U-Net/ResNet-34 about 1.3x faster and its DeepLab
  v3+/ResNet-50 (dilated and depthwise convolutions) about 1.2x slower. By default
  (``channels_last=None``) both layouts are timed on the example batch and the faster one is kept.
* ``torch.inference_mode``, a thread count, and optionally ``torch.compile`` (Inductor; gcc builds the
  kernels on CPU, and the first call pays the compilation).

:func:`optimize_for_inference` applies them and compares the result with the untouched model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import PixelsegError
from ..models.base import main_logits


def _conv_bn_pairs(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """(conv name, conv, batch-norm name, batch norm) where the batch norm reads exactly the conv's output."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, nn.Conv2d] = {}
    keep_alive: list[Tensor] = []
    consumers: dict[nn.Conv2d, list[nn.BatchNorm2d]] = {}
    seen: set[nn.BatchNorm2d] = set()

    def after_conv(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        produced[id(output)] = module  # type: ignore[assignment]
        keep_alive.append(output)  # ids stay unique while the tensors live

    def before_bn(module: nn.Module, inputs: tuple) -> None:
        if module in seen:  # a batch norm called twice (shared across inputs) is left alone
            consumers.pop(next((c for c, b in consumers.items() if module in b), None), None)  # type: ignore[arg-type]
            return
        seen.add(module)  # type: ignore[arg-type]
        conv = produced.get(id(inputs[0]))
        if conv is not None:
            consumers.setdefault(conv, []).append(module)  # type: ignore[arg-type]

    handles = []
    for module in model.modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv))
        elif type(module) is nn.BatchNorm2d:
            handles.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [(names[conv], conv, names[bns[0]], bns[0]) for conv, bns in consumers.items()
            if len(bns) == 1 and bns[0].track_running_stats and bns[0].running_var is not None]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: Tensor) -> int:
    """Fold every conv → batch-norm pair of the eval-mode ``model`` in place; returns how many were folded."""
    if model.training:
        raise PixelsegError("batch-norm folding needs an eval-mode model (call model.eval())")
    pairs = _conv_bn_pairs(model, example)
    for _conv_name, conv, bn_name, bn in pairs:  # folded in float64, rounded once to the conv's dtype
        mean, var = bn.running_mean.double(), bn.running_var.double()
        scale = 1 / torch.sqrt(var + bn.eps)
        shift = torch.zeros_like(mean)
        if bn.affine:
            scale, shift = scale * bn.weight.double(), bn.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        conv.weight.copy_(conv.weight.double() * scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(((bias - mean) * scale + shift).to(conv.weight.dtype))
        _set_submodule(model, bn_name, nn.Identity())
    return len(pairs)


class InferenceModel(nn.Module):
    """An optimised model: channels_last input if asked, main logits out; keeps ``input_size_for``."""

    def __init__(self, model: nn.Module, *, channels_last: bool,
                 compiled: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.model, self.channels_last = model, channels_last
        self.run = model if compiled is None else compiled
        if hasattr(model, "input_size_for"):
            self.input_size_for = model.input_size_for

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return main_logits(self.run(images)).contiguous()


def seconds_per_call(runs: list[Callable[[Tensor], Tensor]], example: Tensor, repeats: int = 3) -> list[float]:
    """For each of ``runs``, the fastest of ``repeats`` timed calls on ``example`` after one warm-up call;
    the runs take turns, so that a burst of load from other processes does not fall on one run only."""
    times: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode():
        for run in runs:
            run(example)
        for _ in range(repeats):
            for run, seconds in zip(runs, times, strict=True):
                start = time.perf_counter()
                run(example)
                seconds.append(time.perf_counter() - start)
    return [min(seconds) for seconds in times]


def faster_with_channels_last(model: nn.Module, example: Tensor, repeats: int = 3) -> bool:
    """Whether the eval-mode ``model`` runs ``example`` faster in channels_last than in contiguous NCHW."""
    nhwc = InferenceModel(copy.deepcopy(model).to(memory_format=torch.channels_last), channels_last=True).eval()
    nchw = InferenceModel(model, channels_last=False).eval()
    seconds_nhwc, seconds_nchw = seconds_per_call([nhwc, nchw], example, repeats)
    return seconds_nhwc < seconds_nchw


def optimize_for_inference(model: nn.Module, example: Tensor, *, fold_bn: bool = True,
                           channels_last: bool | None = None, compile: bool = False, threads: int | None = None,
                           atol: float = 1e-4) -> InferenceModel:
    """A faster copy of the eval-mode ``model`` whose logits on ``example`` match the original's within
    ``atol`` times the largest logit (at least 1). ``channels_last=None`` times both layouts on
    ``example`` (give it the size you will run at) and keeps the faster."""
    if threads:
        torch.set_num_threads(threads)
    model = model.eval()
    with torch.inference_mode():
        expected = main_logits(model(example))
    fast = copy.deepcopy(model)
    if fold_bn:
        fold_batchnorm(fast, example)
    if channels_last is None:
        channels_last = faster_with_channels_last(fast, example)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    # Inductor "freezing" folds the (now constant) weights into the graph and pre-packs them for oneDNN.
    compiled = torch.compile(fast, options={"freezing": True}) if compile else None
    optimised = InferenceModel(fast, channels_last=channels_last, compiled=compiled).eval()
    with torch.inference_mode():
        got = optimised(example)
    difference, scale = float((got - expected).abs().max()), max(1.0, float(expected.abs().max()))
    if not difference <= atol * scale:  # float32 re-association: error grows with the logits' magnitude
        raise PixelsegError(f"the optimised model differs from the original by {difference:.3g} "
                            f"(> {atol} x {scale:.3g}, the largest logit); run without --optimize")
    return optimised
