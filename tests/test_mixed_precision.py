"""``train.precision`` (bf16 autocast), ``train.channels_last`` and ``train.accumulate`` (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixelseg.engine import train as train_module
from pixelseg.engine.config import config_from_dict
from pixelseg.engine.train import Hook, Trainer
from pixelseg.errors import PixelsegError
from pixelseg.io.checkpoint import load_state_dict

# No BatchNorm and no dropout: a batch's gradient is the mean of its images', however it is split.
PLAIN_UNET = {"name": "unet", "kwargs": {"padding": "same", "base_channels": 4, "depth": 2, "batch_norm": False,
                                     "dropout": 0.0}}


def config(tmp_path: Path, name: str, *, batch_size: int = 4, **train):
    return config_from_dict({
        "model": PLAIN_UNET,
        "data": {"name": "shapes", "num_samples": 8, "val_samples": 2, "image_size": 32, "batch_size": batch_size,
                 "val_batch_size": 2, "hflip": False},
        "optim": {"lr": 0.01},
        "train": {"epochs": 2, "threads": 1, "out_dir": str(tmp_path / name), **train},
    })


class Losses(Hook):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, trainer: Trainer, loss: float, parts: dict[str, float]) -> None:
        self.losses.append(loss)


def run(cfg, *hooks: Hook) -> Trainer:
    trainer = Trainer(cfg, quiet=True, hooks=[train_module.LearningRateSchedule(), train_module.Checkpointer(),
                                             *hooks])
    trainer.fit()
    return trainer


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(run_dir / "last_model" / "model.safetensors")


def test_bf16_training_runs_under_cpu_autocast_and_its_loss_falls(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, torch.dtype]] = []
    real = train_module.compute_loss

    def recording(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", recording)
    losses = Losses()
    cfg = config(tmp_path, "bf16", precision="bf16", epochs=1, steps=24)
    cfg.optim.schedule = "step"
    run(cfg, losses)
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert len(losses.losses) == 24 and all(torch.isfinite(torch.tensor(losses.losses)))
    first, last = sum(losses.losses[:4]) / 4, sum(losses.losses[-4:]) / 4
    assert last < 0.8 * first, losses.losses


def test_fp32_training_runs_without_autocast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = train_module.compute_loss
    monkeypatch.setattr(train_module, "compute_loss",
                        lambda *a, **k: (seen.append(torch.is_autocast_enabled("cpu")), real(*a, **k))[1])
    run(config(tmp_path, "fp32", epochs=1))
    assert seen == [False, False]


def test_fp16_is_refused_on_the_cpu_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(PixelsegError, match="fp16 needs a CUDA device.*bf16") as caught:
        run(config(tmp_path, "fp16", precision="fp16"))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "fp16").exists()
    with pytest.raises(PixelsegError, match="train.precision"):
        config(tmp_path, "fp8", precision="fp8")


def test_two_micro_batches_of_two_equal_one_batch_of_four(tmp_path: Path) -> None:
    whole, split = Losses(), Losses()
    one = run(config(tmp_path, "one", batch_size=4), whole)
    two = run(config(tmp_path, "two", batch_size=2, accumulate=2), split)
    # The schedule counts optimizer steps: two per epoch in both runs, the same learning rates.
    assert one.steps_per_epoch == two.steps_per_epoch == 2 and one.step == two.step == 4
    assert [row["lr"] for row in one.history] == [row["lr"] for row in two.history]
    assert split.losses == pytest.approx(whole.losses, rel=1e-5)
    reference, accumulated = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, value in reference.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # ... and differs from plain batches of two (four steps per epoch instead of two).
    plain = run(config(tmp_path, "plain", batch_size=2))
    assert plain.step == 8


def test_accumulation_weights_an_uneven_last_micro_batch_by_its_images(tmp_path: Path) -> None:
    # 11 images, batch 4: the last batch has 3 images; with accumulate=2 and batch 2 they arrive as
    # micro-batches of 2 and 1, weighted 2/3 and 1/3, so the step is still the mean over its 3 images.
    def eleven(name: str, **kw):
        cfg = config(tmp_path, name, **kw)
        cfg.data.num_samples = 11
        return cfg

    one = run(eleven("one", batch_size=4, epochs=1))
    two = run(eleven("two", batch_size=2, accumulate=2, epochs=1))
    assert one.step == two.step == 3
    reference, accumulated = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, value in reference.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_channels_last_trains_in_that_layout_to_the_same_weights(tmp_path: Path) -> None:
    class Layout(Hook):
        def on_step_end(self, trainer: Trainer, loss: float, parts: dict[str, float]) -> None:
            convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
            self.channels_last = all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)

    layout = Layout()
    run(config(tmp_path, "nhwc", channels_last=True, epochs=1), layout)
    run(config(tmp_path, "nchw", epochs=1))
    assert layout.channels_last
    reference, nhwc = weights(tmp_path / "nchw"), weights(tmp_path / "nhwc")
    for name, value in reference.items():
        torch.testing.assert_close(nhwc[name], value, rtol=1e-4, atol=1e-5, msg=name)
