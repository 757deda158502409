"""CamVid mIoU of a small network alone, with dense-CRF post-processing, and with CRF-as-RNN end to end.

A CPU-budget experiment (the project's machine: a shared 2-core CPU), so everything is small and the
absolute figures are far from the papers'; what it measures is the *difference* the CRF makes.

* Data: CamVid (SegNet version) train 367 / test 233 images, resized to ``--height x --width``
  (bilinear for images, nearest for labels); 11 classes, void (11) ignored.
* Network: a small fully convolutional net (4 stride-2 stages to 1/16, 3x3 conv-BN-ReLU, a dilated
  context block, bilinear upsampling of the logits), trained from scratch with Adam for
  ``--minutes`` of wall-clock time.
* Then, from the same weights and for the same number of extra steps (``--finetune-steps``):
  (a) the network alone keeps training; (b) the network + :class:`CRFasRNN` is trained end to end.
* Evaluated on the test set: (a) alone; (a) + dense CRF (mean field, 5 iterations, spatial
  bandwidths scaled to the image size) with the default parameters and with the parameters chosen
  by a 12-point grid on the validation split (bilateral sxy, srgb, weight); (b) with its CRF-as-RNN
  layer.

    .venv/bin/python benchmarks/crf_camvid_miou.py --minutes 8 --finetune-steps 40 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pixelseg.metrics import ConfusionMatrix
from pixelseg.refiners.crf_as_rnn import WithCRFasRNN
from pixelseg.refiners.dense_crf import DenseCRFConfig, dense_crf, unary_from_probabilities

ROOT = Path(__file__).resolve().parents[1]
CLASSES, VOID = 11, 11
MEAN, STD = (0.39, 0.40, 0.41), (0.30, 0.30, 0.30)


def load_split(root: Path, split: str, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(normalised images, uint8 images (B, H, W, 3), labels) of a split, resized."""
    raws, labels = [], []
    for path in sorted((root / split).glob("*.png")):
        image = Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR)
        label = Image.open(root / f"{split}annot" / path.name).resize((width, height), Image.NEAREST)
        raws.append(torch.as_tensor(np.array(image)))
        labels.append(torch.as_tensor(np.array(label)).long())
    raw = torch.stack(raws)
    normalised = (raw.permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    return normalised, raw, torch.stack(labels)


def conv_bn_relu(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class SmallFCN(nn.Module):
    def __init__(self, num_classes: int = CLASSES, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(3, width, 2), conv_bn_relu(width, width),
            conv_bn_relu(width, 2 * width, 2), conv_bn_relu(2 * width, 2 * width),
            conv_bn_relu(2 * width, 4 * width, 2), conv_bn_relu(4 * width, 4 * width),
            conv_bn_relu(4 * width, 4 * width, 2), conv_bn_relu(4 * width, 4 * width, dilation=2),
            conv_bn_relu(4 * width, 4 * width, dilation=4))
        self.classifier = nn.Conv2d(4 * width, num_classes, 1)

    def forward(self, image: Tensor) -> Tensor:
        logits = self.classifier(self.body(image))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def train_steps(model: nn.Module, images: Tensor, labels: Tensor, steps: int | None, seconds: float | None,
                lr: float, batch: int, seed: int) -> int:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start, step = time.perf_counter(), 0
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - start < seconds):
        chosen = torch.randint(0, images.shape[0], (batch,), generator=generator)
        flip = torch.rand(()) < 0.5
        x, y = images[chosen], labels[chosen]
        if flip:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(model(x), y, ignore_index=VOID)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            print(f"  step {step}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
    return step


@torch.no_grad()
def evaluate(predict, images: Tensor, raws: Tensor, labels: Tensor) -> float:
    matrix = ConfusionMatrix(CLASSES, ignore_index=VOID)
    for index in range(images.shape[0]):
        matrix.update(predict(images[index:index + 1], raws[index]), labels[index:index + 1])
    return matrix.mean_iou()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--camvid", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="1: the shared CPU thrashes with more")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_x, _, train_y = load_split(args.camvid, "train", args.height, args.width)
    test_x, test_raw, test_y = load_split(args.camvid, "test", args.height, args.width)
    val_x, val_raw, val_y = load_split(args.camvid, "val", args.height, args.width)
    print(f"train {tuple(train_x.shape)}, test {tuple(test_x.shape)}, torch threads {torch.get_num_threads()}")

    network = SmallFCN()
    steps = train_steps(network, train_x, train_y, None, args.minutes * 60, 2e-3, args.batch, seed=0)
    print(f"trained {steps} steps in {args.minutes} min")

    alone = copy.deepcopy(network)
    train_steps(alone, train_x, train_y, args.finetune_steps, None, 5e-4, args.batch, seed=1)
    with_crf = WithCRFasRNN(copy.deepcopy(network), CLASSES, mean=MEAN, std=STD,
                            theta_alpha=80.0 * args.width / 480, theta_beta=13.0,
                            theta_gamma=3.0 * args.width / 480, appearance_weight=5.0, smoothness_weight=3.0)
    crf_start = time.perf_counter()
    train_steps(with_crf, train_x, train_y, args.finetune_steps, None, 5e-4, args.batch, seed=1)
    print(f"CRF-as-RNN end-to-end fine-tuning: {time.perf_counter() - crf_start:.0f} s")

    alone.eval()
    with_crf.eval()
    scale = args.width / 480
    config = DenseCRFConfig(gaussian_sxy=3.0 * scale, bilateral_sxy=80.0 * scale)

    def network_labels(x: Tensor, raw: Tensor) -> Tensor:
        return alone(x).argmax(1)

    def dense_crf_with(crf_config: DenseCRFConfig):
        def labels(x: Tensor, raw: Tensor) -> Tensor:
            unary = unary_from_probabilities(alone(x)[0].softmax(0))
            return dense_crf(unary, raw.numpy(), crf_config).argmax(0)[None]
        return labels

    # The papers choose the CRF parameters on held-out data: a small grid on the validation split.
    grid = [DenseCRFConfig(gaussian_sxy=3.0 * scale, bilateral_sxy=sxy * scale, bilateral_srgb=srgb,
                           bilateral_compat=compat)
            for sxy in (30.0, 80.0) for srgb in (5.0, 13.0) for compat in (2.0, 5.0, 10.0)]
    val_scores = [evaluate(dense_crf_with(candidate), val_x, val_raw, val_y) for candidate in grid]
    tuned = grid[int(np.argmax(val_scores))]
    print(f"validation mIoU: network alone {evaluate(network_labels, val_x, val_raw, val_y):.4f}; "
          f"dense CRF grid best {max(val_scores):.4f} with bilateral sxy {tuned.bilateral_sxy / scale:.0f} "
          f"(at 480 px width), srgb {tuned.bilateral_srgb:.0f}, compat {tuned.bilateral_compat:.0f}")

    def crf_as_rnn_labels(x: Tensor, raw: Tensor) -> Tensor:
        return with_crf(x).argmax(1)

    results = {name: evaluate(function, test_x, test_raw, test_y)
               for name, function in (("network alone", network_labels),
                                      ("network + dense CRF, default parameters", dense_crf_with(config)),
                                      ("network + dense CRF, parameters chosen on val", dense_crf_with(tuned)),
                                      ("network + CRF-as-RNN (end to end)", crf_as_rnn_labels))}
    crf = with_crf.crf
    print(f"learned CRF-as-RNN weights: appearance {crf.appearance_weight.mean():.3f}, "
          f"smoothness {crf.smoothness_weight.mean():.3f} (started at 5 and 3)")
    for name, value in results.items():
        print(f"CamVid test mIoU ({args.height}x{args.width}, 11 classes): {name}: {value:.4f}")


if __name__ == "__main__":
    main()
