"""Test helpers shared by the model, detector and task tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from pixelseg.data.instances import SyntheticInstances, collate_detection
from pixelseg.models.base import SegmentationOutput, main_logits

# A Mask R-CNN small enough to train a few steps on 64 x 64 images in a test (Panoptic FPN takes it too).
TINY_MASK_RCNN = {"backbone": "mobilenet_v3_large", "width_mult": 0.35, "fpn_channels": 16,
                  "representation_size": 32, "mask_head_channels": 8, "min_size": 64, "max_size": 64,
                  "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_top_n_train": 64,
                  "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def losses_over_steps(model: nn.Module, *, in_channels: int, num_classes: int, size: tuple[int, int],
                      steps: int = 8, batch: int = 2, lr: float = 1e-3) -> list[float]:
    """Train on one fixed random batch (a learnable target: a half-plane mask) and return the losses."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, in_channels, *size, generator=generator)
    target = torch.zeros(batch, *size, dtype=torch.long)
    target[:, :, size[1] // 2:] = num_classes - 1
    images[:, 0] += target.float()  # the class is visible in the input
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        output = model(images)
        logits = main_logits(output)
        crop_target = target
        if logits.shape[-2:] != target.shape[-2:]:  # valid convolutions: compare with the centre
            top = (size[0] - logits.shape[-2]) // 2
            left = (size[1] - logits.shape[-1]) // 2
            crop_target = target[:, top:top + logits.shape[-2], left:left + logits.shape[-1]]
        loss = nn.functional.cross_entropy(logits, crop_target)
        if isinstance(output, SegmentationOutput):
            for weight, aux in zip(output.aux_weights, output.aux, strict=True):
                loss = loss + weight * nn.functional.cross_entropy(
                    nn.functional.interpolate(aux, size=logits.shape[-2:], mode="bilinear"), crop_target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def detector_losses_over_steps(model: nn.Module, loss_names: set[str], *, steps: int = 8,
                               lr: float = 3e-3) -> tuple[list[float], torch.Tensor]:
    """Train a detector on two fixed 64 x 64 ``SyntheticInstances`` images; check that its loss dict has
    ``loss_names``; return the summed losses and the images."""
    images, targets = collate_detection([SyntheticInstances(2, size=64)[i] for i in range(2)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    totals = []
    for _ in range(steps):
        losses = model(images, targets)
        assert set(losses) == loss_names
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    return totals, images


def assert_torchvision_detections(outputs: list[dict[str, torch.Tensor]], sizes: list[tuple[int, int]], *,
                                  max_count: int, num_classes: int) -> None:
    """torchvision's detection output: per image ``boxes``, ``labels`` (1 .. ``num_classes - 1``), ``scores``
    in descending order and ``masks`` ``(N, 1, H, W)`` in [0, 1], at most ``max_count`` of them."""
    for output, (height, width) in zip(outputs, sizes, strict=True):
        assert set(output) == {"boxes", "labels", "scores", "masks"}
        count = len(output["boxes"])
        assert count <= max_count
        assert output["masks"].shape == (count, 1, height, width)
        if count:
            assert 0 <= output["masks"].min() and output["masks"].max() <= 1
            assert output["labels"].min() >= 1 and output["labels"].max() <= num_classes - 1
            assert (output["scores"][:-1] >= output["scores"][1:]).all()


def trains_then_detects(model: nn.Module, loss_names: set[str]) -> list[dict[str, torch.Tensor]]:
    """Eight steps on two synthetic images cut the summed loss below 0.7 of the first; then, in eval mode,
    the detections of one training image (64 x 64) and one unseen random image (48 x 80) in torchvision's
    format (at most 20, 4 classes)."""
    totals, images = detector_losses_over_steps(model, loss_names)
    assert totals[-1] < 0.7 * totals[0]
    model.eval()
    with torch.no_grad():
        outputs = model([images[0], torch.rand(3, 48, 80)])
    assert_torchvision_detections(outputs, [(64, 64), (48, 80)], max_count=20, num_classes=4)
    return outputs


def assert_reloads_with_identical_detections(model: nn.Module, directory: Path,
                                             class_names: list[str]) -> dict[str, torch.Tensor]:
    """Save ``model`` (in eval mode) to ``directory``, load it back, and compare the detections of one
    ``SyntheticInstances`` image; return them."""
    import pixelseg

    image = SyntheticInstances(1, size=64)[0][0]
    model.eval().save_pretrained(directory)
    reloaded = pixelseg.from_pretrained(directory).eval()
    assert reloaded.class_names == class_names
    with torch.no_grad():
        expected, again = model([image])[0], reloaded([image])[0]
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(again[key], expected[key])
    return expected


def empty_detection_target(size: int = 64) -> dict[str, torch.Tensor]:
    """The target of an image without objects."""
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, size, size, dtype=torch.uint8)}


def write_config(directory: Path, values: dict, name: str) -> Path:
    """Write ``values`` as ``directory/NAME.yaml``, its run going to ``directory/NAME``."""
    config = json.loads(json.dumps(values))
    config["train"]["out_dir"] = str(directory / name)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: object) -> str:
    """``pixelseg ARGS`` through the main command line; fails the test on a non-zero exit."""
    from typer.testing import CliRunner

    from pixelseg import cli

    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def predicted_labels(image: Path, model_dir: Path, out: Path, *options: str) -> np.ndarray:
    """``pixelseg predict IMAGE --model MODEL_DIR --out OUT *options`` (:func:`run_cli`): the labels it wrote."""
    run_cli("predict", image, "--model", model_dir, "--out", out, *options)
    return np.array(Image.open(out / f"{image.stem}.png"))
