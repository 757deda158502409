"""Panoptic FPN on the synthetic panoptic set: PQ, SQ, RQ (all / things / stuff) by pixelseg's PanopticQuality and
the PQ of the same predictions by torchmetrics' PanopticQuality.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/panoptic_fpn_synthetic.py runs/panoptic_synthetic_cpu --split test

torchmetrics takes (category, instance) per pixel; a void pixel (segment id 0) is given category 0, which it does not
know (allow_unknown_preds_category=True for the predictions). Its void rule differs from the paper's (see
pixelseg.metrics.panoptic): it also removes predicted-void pixels from the ground-truth area, so the two agree
exactly only where the predictions leave no pixel void; both figures are printed.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

from pixelseg.data.build import build_eval_dataset, collate_for
from pixelseg.engine.evaluate import saved_data_config, task_of
from pixelseg.io.saved_model import resolve_model_dir
from pixelseg.models.pretrained import from_pretrained
from pixelseg.tasks.base import model_info
from pixelseg.tasks.panoptic import PanopticScores, target_annotation, to_annotation


def pairs(annotation) -> torch.Tensor:
    lookup = {0: 0} | {int(s["id"]): int(s["category_id"]) for s in annotation.segments_info}
    ids = np.asarray(annotation.ids)
    present = np.unique(ids)
    category = np.array([lookup[int(v)] for v in present])[np.searchsorted(present, ids)]
    return torch.from_numpy(np.stack([category, ids], axis=-1)).long()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = resolve_model_dir(args.run)
    model = from_pretrained(model_dir).eval()
    assert task_of(model).name == "panoptic"
    info = model_info(model, model_dir)
    config = saved_data_config(model, model_dir)
    dataset = build_eval_dataset(config, info, args.split)
    ours = PanopticScores(info)
    things = [c for c, t in zip(info.category_ids, info.isthing, strict=True) if t]
    stuff = [c for c, t in zip(info.category_ids, info.isthing, strict=True) if not t]
    theirs = TorchmetricsPQ(things=set(things), stuffs=set(stuff), allow_unknown_preds_category=True)
    theirs_parts = TorchmetricsPQ(things=set(things), stuffs=set(stuff), allow_unknown_preds_category=True,
                                  return_sq_and_rq=True)
    void_pixels = total_pixels = 0
    with torch.no_grad():
        for images, targets in DataLoader(dataset, batch_size=1, collate_fn=collate_for(config)):
            output = model(images)[0]
            truth = target_annotation(targets[0])
            prediction = to_annotation(output["panoptic"], output["segments"], info, truth.file_name)
            ours.update(prediction, truth)
            theirs.update(pairs(prediction)[None], pairs(truth)[None])
            theirs_parts.update(pairs(prediction)[None], pairs(truth)[None])
            void_pixels += int((prediction.ids == 0).sum())
            total_pixels += prediction.ids.size
    scores = ours.compute()
    pq, sq, rq = (float(v) for v in theirs_parts.compute())
    result = {"run": str(model_dir), "split": args.split, "images": len(dataset),
              **{k: v for k, v in scores.items() if not k.endswith("_per_class")},
              "torchmetrics_PQ": float(theirs.compute()), "torchmetrics_SQ": sq, "torchmetrics_RQ": rq,
              "predicted_void_fraction": void_pixels / total_pixels}
    print(json.dumps(result, indent=1))
    print(ours.report())
    if not math.isnan(result["PQ"]):
        print(f"PQ ours / torchmetrics: {result['PQ']:.4f} / {result['torchmetrics_PQ']:.4f} "
              f"(ratio {result['PQ'] / max(result['torchmetrics_PQ'], 1e-12):.4f})")


if __name__ == "__main__":
    main()
