"""engine.speedups: the memory layout is chosen by timing, and the chosen model keeps the logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pixelseg
from pixelseg.inference import speedups


@pytest.mark.parametrize("nhwc_faster", [True, False])
@torch.inference_mode()
def test_the_layout_that_times_faster_is_kept_and_the_logits_stay_equal(nhwc_faster: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_seconds(runs, example, repeats=3):  # the layout under test is made the faster one
        return [1.0 if run.channels_last == nhwc_faster else 2.0 for run in runs]

    monkeypatch.setattr(speedups, "seconds_per_call", fake_seconds)
    model = pixelseg.create_model("deeplabv3plus", num_classes=3, encoder="test_resnet").eval()
    images = torch.randn(2, 3, 40, 56)
    fast = speedups.optimize_for_inference(model, images[:1])
    assert fast.channels_last is nhwc_faster
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is nhwc_faster
    assert torch.allclose(fast(images), model(images), atol=1e-5, rtol=0)


@torch.inference_mode()
def test_seconds_per_call_times_the_runs_in_turn_after_a_warm_up() -> None:
    calls: list[str] = []

    def named(name: str):
        def run(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return x
        return run

    seconds = speedups.seconds_per_call([named("a"), named("b")], torch.zeros(1), repeats=3)
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)
    assert calls == ["a", "b"] * 4
