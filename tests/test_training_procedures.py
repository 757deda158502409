"""The papers' training procedures as config options (issue 17): staged training (init_from), frozen layers
and unfreezing schedules, per-group learning-rate multipliers, RMSprop and He-uniform init, DeepLab's
multi-scale inputs, U-Net's border weight map, the dense CRF at evaluation and CRF-as-RNN through train."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelseg.data.transforms import JointTransform
from pixelseg.data.weight_map import WeightMapped, unet_weight_map
from pixelseg.engine import train as train_module
from pixelseg.engine.config import config_from_dict
from pixelseg.engine.evaluate import evaluate
from pixelseg.engine.train import (
    LearningRateSchedule,
    Trainer,
    build_optimizer,
    frozen_prefixes,
    init_from,
    learning_rate,
    train,
)
from pixelseg.errors import PixelsegError
from pixelseg.losses import CrossEntropyLoss
from pixelseg.models.base import SegmentationOutput
from pixelseg.models.modules.init import initialize
from pixelseg.models.msc import MultiScaleInput
from pixelseg.models.pretrained import from_pretrained, save_pretrained
from pixelseg.models.registry import create_model
from pixelseg.refiners.crf_as_rnn import WithCRFasRNN

torch.set_num_threads(1)

TINY_UNET = {"padding": "same", "base_channels": 4, "depth": 2, "batch_norm": True}


def tiny_config(tmp_path: Path, name: str = "run", **sections) -> dict:
    values = {
        "model": {"name": "unet", "kwargs": dict(TINY_UNET)},
        "data": {"name": "shapes", "num_samples": 8, "val_samples": 2, "image_size": 32, "batch_size": 4,
                 "val_batch_size": 2},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "threads": 1, "out_dir": str(tmp_path / name)},
    }
    for key, value in sections.items():
        values[key] = {**values.get(key, {}), **value}
    return values


def trainer_for(values: dict, **kw) -> Trainer:
    return Trainer(config_from_dict(values), quiet=True, **kw)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- initialisation and optimizers ----------------------------------------------------------------------

def test_he_uniform_draws_from_plus_minus_sqrt_6_over_fan_in_with_zero_biases() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 64, 3)  # fan_in 48·3·3 = 432
    initialize(nn.Sequential(conv), "he_uniform")
    bound = math.sqrt(6 / 432)  # He et al. 2015, uniform form (Keras/Lasagne HeUniform)
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.98 * bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # U(-b, b): std b/√3
    assert torch.count_nonzero(conv.bias) == 0


def test_model_init_he_uniform_reinitialises_the_configured_model(tmp_path: Path) -> None:
    plain = trainer_for(tiny_config(tmp_path, "a"))
    plain._setup()
    he = trainer_for(tiny_config(tmp_path, "b", model={"init": "he_uniform"}))
    he._setup()
    convs = [m for m in he.model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= math.sqrt(6 / fan_in) + 1e-7
        assert conv.bias is None or torch.count_nonzero(conv.bias) == 0
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), he.model.parameters(), strict=True))
    with pytest.raises(PixelsegError, match="model.init"):
        config_from_dict(tiny_config(tmp_path, model={"init": "he_uniformm"}))


def test_rmsprop_is_fc_densenets_optimizer(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tmp_path, optim={"name": "rmsprop", "lr": 1e-3}))
    optimizer = build_optimizer(config, nn.Linear(3, 2))
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["alpha"] == 0.9 and optimizer.defaults["eps"] == 1e-6  # Lasagne's rmsprop
    with pytest.raises(PixelsegError, match="rmsprop"):
        config_from_dict(tiny_config(tmp_path, optim={"name": "rmsprob"}))


def test_lr_mult_groups_keep_their_multiplier_under_the_schedule(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    config = config_from_dict(tiny_config(tmp_path, optim={"name": "sgd", "lr": 0.01, "lr_mult": {"2": 10}}))
    optimizer = build_optimizer(config, model)
    groups = {group["lr_mult"]: group["params"] for group in optimizer.param_groups}
    assert [id(p) for p in groups[10.0]] == [id(model[2].weight), id(model[2].bias)]
    assert len(groups[1.0]) == 2
    trainer = SimpleNamespace(config=config, optimizer=optimizer, step=0, total_steps=100)
    for step in (0, 30, 99):
        trainer.step = step
        LearningRateSchedule().on_step_start(trainer)  # type: ignore[arg-type]
        base = learning_rate(config, step, 100)
        lrs = {group["lr_mult"]: group["lr"] for group in optimizer.param_groups}
        assert lrs[1.0] == pytest.approx(base) and lrs[10.0] == pytest.approx(10 * base)
    assert base < 0.01  # the poly schedule did decay


def test_an_lr_mult_or_freeze_prefix_that_names_no_parameter_is_refused(tmp_path: Path) -> None:
    trainer = trainer_for(tiny_config(tmp_path, optim={"lr_mult": {"hed": 10}}))
    with pytest.raises(PixelsegError, match="'hed' is the prefix of no parameter"):
        trainer._setup()
    trainer = trainer_for(tiny_config(tmp_path, "b", model={"freeze": ["encoderr"]}))
    with pytest.raises(PixelsegError, match="model.freeze"):
        trainer._setup()


# ---- freezing and staged training -----------------------------------------------------------------------

def first_prefix(model: nn.Module) -> str:
    return next(name for name, _ in model.named_parameters()).split(".")[0]


def test_frozen_layers_do_not_change_and_the_others_train(tmp_path: Path) -> None:
    probe = trainer_for(tiny_config(tmp_path, "probe"))
    probe._setup()
    prefix = first_prefix(probe.model)
    values = tiny_config(tmp_path, model={"freeze": [prefix]}, train={"steps": 2})
    before = trainer_for(values)
    before._setup()
    start = weights_of(before.model)
    run = train(config_from_dict(values), quiet=True)
    after = from_pretrained(run / "last_model").state_dict()
    frozen = [k for k in start if k.startswith(prefix + ".") and "running" not in k and "num_batches" not in k]
    trained = [k for k in start if not k.startswith(prefix + ".") and k.endswith("weight")]
    assert frozen and all(torch.equal(start[k], after[k]) for k in frozen)
    assert any(not torch.equal(start[k], after[k]) for k in trained)


def test_unfreeze_at_epoch_frees_a_prefix_from_that_epoch_and_resume_is_exact(tmp_path: Path,
                                                                              monkeypatch) -> None:
    probe = trainer_for(tiny_config(tmp_path, "probe"))
    probe._setup()
    prefix = first_prefix(probe.model)
    schedule = {"train": {"epochs": 2, "unfreeze_at_epoch": {prefix: 1}}, "optim": {"lr_mult": {prefix: 10}}}
    config = config_from_dict(tiny_config(tmp_path, "sched", **schedule))
    assert frozen_prefixes(config, 0) == [prefix] and frozen_prefixes(config, 1) == []

    seen: list[tuple[int, bool]] = []
    stop_at_epoch: list[int] = []
    original = train_module.Trainer._train_step

    def spy(self, micro, sizes):
        if self.epoch in stop_at_epoch:
            stop_at_epoch.clear()
            raise KeyboardInterrupt  # interrupted after the first epoch's checkpoint
        parameter = next(p for n, p in self.model.named_parameters() if n.startswith(prefix + "."))
        seen.append((self.epoch, parameter.requires_grad))
        return original(self, micro, sizes)

    monkeypatch.setattr(train_module.Trainer, "_train_step", spy)
    straight = train(config, quiet=True)
    assert seen == [(0, False), (0, False), (1, True), (1, True)]  # 8 images, batches of 4, 2 epochs

    # Stop after the first epoch and resume: the same weights as the uninterrupted run.
    parts = config_from_dict(tiny_config(tmp_path, "parts", **schedule))
    stop_at_epoch.append(1)
    with pytest.raises(KeyboardInterrupt):
        train(parts, quiet=True)
    seen.clear()
    train(parts, resume=True, quiet=True)
    assert seen == [(1, True), (1, True)]
    a = from_pretrained(straight / "last_model").state_dict()
    b = from_pretrained(tmp_path / "parts" / "last_model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fcn16s_is_initialised_from_fcn32s_by_name_and_shape(tmp_path: Path) -> None:
    coarse = create_model("fcn32s", num_classes=3)
    coarse.pixelseg_config["task"] = "semantic"
    save_pretrained(coarse, tmp_path / "fcn32s")
    del coarse
    finer = create_model("fcn16s", num_classes=3)
    report = init_from(finer, tmp_path / "fcn32s")
    saved = from_pretrained(tmp_path / "fcn32s").state_dict()
    own = finer.state_dict()
    assert {"fc6.0.weight", "fc7.0.weight", "score_fr.weight", "encoder.stages.0.0.0.weight"} <= set(report.loaded)
    assert all(torch.equal(own[k], saved[k]) for k in report.loaded)
    assert {"score_pool4.weight", "upscore2.weight"} <= set(report.absent)  # new in FCN-16s: its own init
    assert "loaded" in report.line() and "not in the source" in report.line()


def test_init_from_skips_other_shapes_and_refuses_a_source_with_nothing_in_common(tmp_path: Path) -> None:
    source = create_model("unet", num_classes=2, **TINY_UNET)
    save_pretrained(source, tmp_path / "two")
    target = create_model("unet", num_classes=5, **TINY_UNET)
    report = init_from(target, tmp_path / "two")
    assert report.other_shape and all(target.state_dict()[k].shape[0] == 5 for k in report.other_shape)
    assert report.loaded and not report.absent
    other = nn.Sequential(nn.Conv2d(3, 7, 1))
    with pytest.raises(PixelsegError, match="no weight of the saved model"):
        init_from(other, tmp_path / "two")


def test_model_init_from_in_a_training_run(tmp_path: Path) -> None:
    first = train(config_from_dict(tiny_config(tmp_path, "first", train={"steps": 1})), quiet=True)
    trainer = trainer_for(tiny_config(tmp_path, "second", model={"init_from": str(first)}, train={"steps": 1}))
    trainer._setup()
    assert trainer.init_report is not None and not trainer.init_report.absent
    best = from_pretrained(first).state_dict()
    assert all(torch.equal(trainer.model.state_dict()[k], best[k]) for k in trainer.init_report.loaded)


# ---- DeepLab's multi-scale inputs -----------------------------------------------------------------------

class Doubler(nn.Module):
    """A 'network' whose logits are known: the image's channels, doubled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_msc_max_fuses_the_shared_network_at_scales_1_075_05() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 2, 16, 16)
    msc = MultiScaleInput(Doubler(), (1.0, 0.75, 0.5))
    expected = []
    for scale in (1.0, 0.75, 0.5):
        size = math.floor(16 * scale)
        scaled = image if scale == 1 else F.interpolate(image, size=(size, size), mode="bilinear",
                                                        align_corners=False)
        expected.append(F.interpolate(2 * scaled, size=(16, 16), mode="bilinear", align_corners=False))
    fused = torch.maximum(torch.maximum(expected[0], expected[1]), expected[2])
    msc.eval()
    assert torch.allclose(msc(image), fused, atol=1e-6)
    msc.train()
    output = msc(image)
    assert isinstance(output, SegmentationOutput) and len(output.aux) == 3 and output.aux_weights == [1.0] * 3
    assert torch.allclose(output.out, fused, atol=1e-6)
    assert all(torch.allclose(a, e, atol=1e-6) for a, e in zip(output.aux, expected, strict=True))


def test_model_msc_trains_and_the_saved_model_is_rebuilt_with_it(tmp_path: Path) -> None:
    run = train(config_from_dict(tiny_config(tmp_path, model={"msc": [1.0, 0.75, 0.5]}, train={"steps": 2})),
                quiet=True)
    model = from_pretrained(run / "last_model")
    assert isinstance(model, MultiScaleInput) and model.scales == [1.0, 0.75, 0.5]
    assert model.pixelseg_config["kwargs"]["base"] == "unet"
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)


# ---- CRF-as-RNN trained and saved through train; the dense CRF at evaluation -----------------------------

def test_crf_as_rnn_trains_through_the_config_and_from_pretrained_restores_it(tmp_path: Path) -> None:
    values = tiny_config(tmp_path, model={"refine": {"name": "crf_as_rnn", "iterations": 2}}, train={"steps": 2})
    values["data"]["image_size"] = 16
    run = train(config_from_dict(values), quiet=True)
    model = from_pretrained(run / "last_model").eval()
    assert isinstance(model, WithCRFasRNN) and model.crf.iterations == 2
    assert "refine" not in model.pixelseg_config  # a layer of the model, not a refiner applied after it
    start = torch.full_like(model.crf.appearance_weight, 5.0)
    assert not torch.equal(model.crf.appearance_weight, start)  # the CRF's kernel weights trained
    image = torch.randn(1, 3, 16, 16)
    again = from_pretrained(run / "last_model").eval()
    with torch.no_grad():
        assert torch.allclose(model(image), again(image))


def test_evaluate_refine_crf_applies_the_dense_crf_to_any_model(tmp_path: Path, monkeypatch) -> None:
    run = train(config_from_dict(tiny_config(tmp_path, train={"steps": 1})), quiet=True)
    calls = []
    from pixelseg.refiners import dense_crf

    original = dense_crf.DenseCRFRefiner.__call__

    def counting(self, images, logits):
        calls.append(images.shape[0])
        return original(self, images, logits)

    monkeypatch.setattr(dense_crf.DenseCRFRefiner, "__call__", counting)
    plain = evaluate(run, report=False)
    assert calls == []
    refined = evaluate(run, report=False, refine="crf")
    assert sum(calls) == 2 and 0 <= refined["mean_iou"] <= 1
    assert plain["images"] == refined["images"]
    with pytest.raises(PixelsegError, match="--refine"):
        evaluate(run, report=False, refine="grabcut")


# ---- U-Net's border weight map --------------------------------------------------------------------------

def two_cells(gap: int = 1) -> np.ndarray:
    """Two 10x10 cells (label 1) side by side, ``gap`` background pixels apart, near the left edge of a
    40x120 background."""
    mask = np.zeros((40, 120), dtype=np.int64)
    mask[15:25, 5:15] = 1
    mask[15:25, 15 + gap:25 + gap] = 1
    return mask


def test_weight_between_two_cells_is_w0_plus_wc_and_far_away_wc() -> None:
    mask = two_cells(gap=1)
    weights = unet_weight_map(mask, w0=10.0, sigma=5.0)
    cells, total = (mask == 1).sum(), mask.size
    wc_background = total / (2 * (total - cells))  # two classes present, equal total weight each
    wc_cell = total / (2 * cells)
    # The gap pixel between the cells: one pixel from each (d1 = d2 = 1), eq. 2 of Ronneberger et al.
    assert weights[20, 15] == pytest.approx(wc_background + 10 * math.exp(-(1 + 1) ** 2 / (2 * 5**2)), rel=1e-5)
    assert weights[20, 15] == pytest.approx(wc_background + 10, rel=0.1)
    assert weights[20, 119] == pytest.approx(wc_background, abs=1e-6)  # ~95 px from both cells
    assert weights[20, 10] == pytest.approx(wc_cell + 10 * math.exp(-(0 + 6) ** 2 / 50), rel=1e-5)
    # One cell alone: no border term anywhere.
    single = np.zeros_like(mask)
    single[15:25, 5:15] = 1
    assert unet_weight_map(single, w0=10, sigma=5, class_balance=False).max() == pytest.approx(1.0)


class RawPairs(torch.utils.data.Dataset):
    """Image/mask pairs from files, like the folder readers: ``samples`` and ``load``."""

    def __init__(self, folder: Path, transform=None) -> None:
        self.samples, self.transform = [], transform
        for index in range(2):
            mask = two_cells(gap=1 + index)
            path = folder / f"mask{index}.npy"
            np.save(path, mask)
            self.samples.append((folder / f"image{index}.png", path))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        mask = np.load(self.samples[index][1])
        weights = unet_weight_map(mask)
        image = np.round(weights * 8).astype(np.uint8)  # the image carries the weights (to check the moves)
        return image, mask


def test_weight_map_moves_with_the_mask_under_flips_and_crops(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    steps = [v2.RandomCrop((32, 64), pad_if_needed=True), v2.RandomHorizontalFlip(p=1.0)]
    options = SimpleNamespace(w0=10.0, sigma=5.0, class_balance=True, background=0, cache_dir=None)
    data = WeightMapped(RawPairs(tmp_path, JointTransform(steps, [0.0], [1 / 255.0])), options, 255)
    torch.manual_seed(3)
    for index in range(2):
        image, mask, weights = data[index]
        assert image.shape[-2:] == mask.shape == weights.shape == (32, 64)
        assert torch.equal(torch.round(weights * 8), torch.round(image[0]))  # moved exactly as the image
        raw = unet_weight_map(np.load(data.samples[index][1]))
        assert not torch.equal(weights, torch.from_numpy(raw[:32, :64]))  # it was flipped


def test_weight_map_is_computed_once_per_mask_and_cached_by_path_and_mtime(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    options = SimpleNamespace(w0=10.0, sigma=5.0, class_balance=True, background=0, cache_dir=str(cache))
    pairs = RawPairs(tmp_path, JointTransform([], [0.0], [1 / 255.0]))
    data = WeightMapped(pairs, options, 255)
    first = [data[i][2] for i in range(2)] + [data[i][2] for i in range(2)]
    assert data.computed == 2 and len(list(cache.glob("*.npy"))) == 2
    again = WeightMapped(pairs, options, 255)
    assert torch.equal(again[0][2], first[0]) and again.computed == 0  # read from the cache folder
    path = pairs.samples[0][1]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the mask changed
    fresh = WeightMapped(pairs, options, 255)
    fresh[0]
    assert fresh.computed == 1


def test_pixel_weights_scale_each_pixels_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    target[0, 0, 0] = 255
    weights = torch.rand(2, 4, 5) * 3
    loss = CrossEntropyLoss()(logits, target, weights)
    per_pixel = -torch.log_softmax(logits, 1).gather(1, target.clamp(max=2)[:, None])[:, 0]
    counted = target != 255
    assert loss.item() == pytest.approx(float((per_pixel * weights)[counted].sum() / counted.sum()), rel=1e-5)


def test_train_weight_map_trains_and_a_loss_without_pixel_weights_is_refused(tmp_path: Path,
                                                                            monkeypatch) -> None:
    seen = []
    original = train_module.compute_loss

    def spy(task, model, batch, criterion, device):
        seen.append(len(batch))
        return original(task, model, batch, criterion, device)

    monkeypatch.setattr(train_module, "compute_loss", spy)
    values = tiny_config(tmp_path, train={"steps": 2, "weight_map": {"w0": 10, "sigma": 5}},
                         data={"hflip": True, "crop_size": 24})
    train(config_from_dict(values), quiet=True)
    assert seen == [3, 3]  # images, masks, weights
    values = tiny_config(tmp_path, "dice", train={"steps": 1, "weight_map": {}})
    values["loss"] = [{"name": "dice"}]
    with pytest.raises(PixelsegError, match="per-pixel weights"):
        train(config_from_dict(values), quiet=True)
