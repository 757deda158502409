"""Mask R-CNN R50-FPN end to end: pixelseg's RoIAlign (the default) against torchvision's kernel, same model.

One model (``create_model("mask_rcnn", num_classes=91)``: COCO's 91 labels, 81 of them used, as
torchvision's ``maskrcnn_resnet50_fpn``; random weights, eval mode), one 480x640 image (resized to
800 on the short side by the model's transform), one thread. ``box_score_thresh=0`` so that the random
weights still detect: the RPN keeps 1000 proposals, the box head pools all of them (7x7) and the mask
head the 100 detections (14x14), as a trained model does on a busy COCO image. The two paths differ
only in the two RoI poolers: our ``MultiLevelRoIAlign`` or ``torchvision.ops.MultiScaleRoIAlign``
swapped into the same model. They run interleaved (A B A B ...) for ``--rounds`` rounds after a warm-up;
the clock is this process's CPU time (``time.process_time``), and the median of each path and the ratio
ours / torchvision (above 1: we are slower) are printed.

Equality: the pooled features of the two poolers on the very same pyramid and proposals (and on the
detections, for the mask pooler) must agree to 1e-5 (``torch.allclose(rtol=1e-5, atol=1e-5)``: with random
weights the pyramid's values reach ~100, where float32 itself rounds at ~1e-5), and the detections of the
two runs (boxes, scores, labels, masks) are compared. The RoI poolers alone are also timed, forward and forward+backward (the
training pass), interleaved the same way.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mask_rcnn_roi_speed.py [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from timing import interleaved_seconds
from torchvision.ops import MultiScaleRoIAlign

from pixelseg.models import create_model

LEVELS = ["0", "1", "2", "3"]


def interleaved_process_seconds(paths: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """CPU seconds of each path (grad enabled: the backward passes), taking turns for ``rounds`` rounds."""
    seconds: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(rounds):
        for label, run in paths.items():
            start = time.process_time()
            run()
            seconds[label].append(time.process_time() - start)
    return seconds


def report(name: str, seconds: dict[str, list[float]]) -> None:
    ours, theirs = statistics.median(seconds["pixelseg"]), statistics.median(seconds["torchvision"])
    print(f"{name:44s} ours {ours * 1e3:9.1f} ms  torchvision {theirs * 1e3:9.1f} ms  ratio {ours / theirs:5.3f}"
          f"  (ours: {', '.join(f'{v:.3f}' for v in seconds['pixelseg'])}; "
          f"tv: {', '.join(f'{v:.3f}' for v in seconds['torchvision'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool-rounds", type=int, default=7, help="rounds of the poolers timed alone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} rounds={args.rounds} image={args.size[0]}x{args.size[1]} "
          f"torch {torch.__version__} load average {os.getloadavg()[0]:.2f}")

    torch.manual_seed(0)
    model = create_model("mask_rcnn", num_classes=91, box_score_thresh=0.0).eval()
    # a smooth random picture (noise blurred to blobs), values in [0, 1]
    image = torch.nn.functional.interpolate(torch.rand(1, 3, args.size[0] // 16, args.size[1] // 16),
                                            size=tuple(args.size), mode="bilinear", align_corners=False)[0]
    poolers = {
        "pixelseg": (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool),
        "torchvision": (MultiScaleRoIAlign(LEVELS, 7, 2), MultiScaleRoIAlign(LEVELS, 14, 2)),
    }
    assert poolers["pixelseg"][0].implementation == "pixelseg", "the default must be our RoIAlign"

    def with_poolers(label: str) -> Callable[[torch.Tensor], object]:
        def run(picture: torch.Tensor) -> object:
            model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = poolers[label]
            return model([picture])
        return run

    paths = {label: with_poolers(label) for label in poolers}

    # equality: the pooled features on the very same pyramid and boxes, then the detections
    with torch.inference_mode():
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections = {label: run(image)[0] for label, run in paths.items()}
    boxes = [detections["pixelseg"]["boxes"] * images.image_sizes[0][0] / args.size[0]]
    print(f"resized to {tuple(images.tensors.shape[-2:])}, {len(proposals[0])} proposals, "
          f"{len(detections['pixelseg']['boxes'])} / {len(detections['torchvision']['boxes'])} detections")
    pooled_diffs, all_close = [], True
    for index, name in enumerate(("box (7x7, proposals)", "mask (14x14, detections)")):
        on = proposals if index == 0 else boxes
        with torch.inference_mode():
            ours = poolers["pixelseg"][index](features, on, images.image_sizes)
            theirs = poolers["torchvision"][index](features, on, images.image_sizes)
        pooled_diffs.append((ours - theirs).abs().max().item())
        with torch.inference_mode():  # torchvision in float64 (box coordinates too): how far each float32 result is
            exact = poolers["torchvision"][index]({k: v.double() for k, v in features.items()},
                                                  [b.double() for b in on], images.image_sizes)
        close = torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        print(f"pooled features, {name}: {tuple(ours.shape)}, max |ours - torchvision| = {pooled_diffs[-1]:.2e} "
              f"(largest |value| {theirs.abs().max().item():.1f}; allclose rtol=atol=1e-5: {close})")
        print(f"  max |ours - float64| = {(ours.double() - exact).abs().max().item():.2e}, "
              f"max |torchvision - float64| = {(theirs.double() - exact).abs().max().item():.2e}")
        all_close = all_close and close
    ours_out, tv_out = detections["pixelseg"], detections["torchvision"]
    if all(ours_out[key].shape == tv_out[key].shape for key in ours_out):
        diffs = {key: (ours_out[key].float() - tv_out[key].float()).abs().max().item() for key in ours_out}
        print("detections, max |ours - torchvision|: "
              + ", ".join(f"{key} {value:.2e}" for key, value in diffs.items()))
    else:
        print("detections differ in number:", {key: tuple(v.shape) for key, v in ours_out.items()},
              {key: tuple(v.shape) for key, v in tv_out.items()})
    if not all_close:
        raise SystemExit(f"pooled features differ by {max(pooled_diffs):.2e}, beyond rtol=atol=1e-5")

    # the poolers alone on that pyramid: forward, and forward+backward as in training
    for index, (name, on) in enumerate((("box pooler, forward", proposals), ("mask pooler, forward", boxes))):
        pool_paths = {label: (lambda pool=pair[index], on=on: pool(features, on, images.image_sizes))
                      for label, pair in poolers.items()}
        for run in pool_paths.values():
            with torch.inference_mode():
                run()
        report(f"{name} ({len(on[0])} boxes)",
               interleaved_seconds({k: (lambda _, r=r: r()) for k, r in pool_paths.items()}, None,
                                   args.pool_rounds, clock=time.process_time))
        leaves = {key: features[key].clone().requires_grad_(True) for key in LEVELS}

        def train_pass(pool, on=on, leaves=leaves) -> None:
            out = pool(leaves, on, images.image_sizes)
            out.backward(torch.ones_like(out))

        grads = []
        for pair in poolers.values():
            for leaf in leaves.values():
                leaf.grad = None
            train_pass(pair[index])
            grads.append(torch.cat([(torch.zeros_like(leaf) if leaf.grad is None else leaf.grad).flatten()
                                    for leaf in leaves.values()]))
        train_paths = {label: (lambda pool=pair[index]: train_pass(pool)) for label, pair in poolers.items()}
        report(f"{name.replace('forward', 'forward+backward')} ({len(on[0])} boxes)",
               interleaved_process_seconds(train_paths, args.pool_rounds))
        print(f"  gradient of the pyramid, max |ours - torchvision| = {(grads[0] - grads[1]).abs().max().item():.2e}")

    # end to end
    for run in paths.values():  # warm-up
        with torch.inference_mode():
            run(image)
    seconds = interleaved_seconds(paths, image, args.rounds, clock=time.process_time)
    report("Mask R-CNN R50-FPN end to end", seconds)
    ours, theirs = statistics.median(seconds["pixelseg"]), statistics.median(seconds["torchvision"])
    print(f"end to end: ours {ours:.3f} s, torchvision {theirs:.3f} s, ratio ours/torchvision {ours / theirs:.3f}"
          f"  (load average {os.getloadavg()[0]:.2f})")
    model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = poolers["pixelseg"]


if __name__ == "__main__":
    main()
