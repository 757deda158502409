#!/usr/bin/env bash
# Train and evaluate every context model on 1/4-resolution CamVid, one at a time, one thread.
# Usage (from the repository root):  bash benchmarks/context/run_all.sh [model ...]
# Writes runs/context/<model>/ (the trainer's run; a model whose best/ exists is not trained again) and
# runs/context/<model>/{plain,tta}.json + times.txt. TTA: scales 0.75, 1, 1.25 averaged (no flip: the
# flip doubles the evaluation time, which the shared CPU could not afford for every model).
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
DATA=/tmp/pixelseg_camvid_quarter
[ -d "$DATA/train" ] || .venv/bin/python benchmarks/context/camvid_reduced.py --factor 4 --out "$DATA"
MODELS=${*:-deeplabv3plus deeplabv3 sharpmask fastfcn pspnet danet hrnetv2_w18 deeplabv2 hmsa deeplabv1 sharpmask_c128}
for model in $MODELS; do
  run=runs/context/$model
  start=$(date +%s)
  [ -f "$run/best/config.json" ] || .venv/bin/pixelseg train benchmarks/context/$model.yaml
  trained=$(date +%s)
  .venv/bin/pixelseg evaluate "$run" --split val --out "$run/plain.json"
  plain=$(date +%s)
  .venv/bin/pixelseg evaluate "$run" --split val --tta-scales 0.75,1,1.25 --out "$run/tta.json"
  done_at=$(date +%s)
  printf 'train_s %d\neval_plain_s %d\neval_tta_s %d\nload_avg %s\n' $((trained - start)) $((plain - trained)) \
    $((done_at - plain)) "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$run/times.txt"
  echo "== $model done: $(tr '\n' ' ' < "$run/times.txt")"
done
