#!/usr/bin/env bash
# The CPU recipe of the first default model (edge-s-default, 700 steps on 2 CPU cores; replaced
# by the GPU recipe in scripts/train_default.sh, see MODEL_CARD.md "History"):
# synthetic data -> d2a-train edge-s -> d2a-eval on fresh ID/OOD test sets -> d2a-export.
# Resumable: rerunning continues data generation and training from where they stopped.
# Usage: bash scripts/train_default_cpu.sh [WORK_DIR] [STEPS]   (defaults: work/default-cpu, 700)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work/default-cpu}
STEPS=${2:-700}
bin=.venv/bin
mkdir -p "$W"
$bin/d2a-data generate --split id  --num 16000 --size 192 --seed 1 --out "$W/train_id"
$bin/d2a-data generate --split ood --num 4000  --size 192 --seed 2 --out "$W/train_ood"
$bin/d2a-data generate --split id  --num 512   --size 192 --seed 1001 --out "$W/test_id"
$bin/d2a-data generate --split ood --num 512   --size 192 --seed 1002 --out "$W/test_ood"
resume=(); [ -f "$W/run/checkpoints/latest.json" ] && resume=(--resume)
$bin/d2a-train edge-s-default --data "$W/train_id" "$W/train_ood" --out "$W/run" --steps "$STEPS" \
  --ckpt-every 50 "${resume[@]}"
$bin/d2a-eval "$W/run" --data "$W/test_id" --data "$W/test_ood" --out "$W/eval"
$bin/d2a-export "$W/run" --int8 --calib 256 --out "$W/bundle"
echo "done: $W/bundle (copy model_fp32.onnx, model_int8.onnx, body.npz, manifest.json into d2a_edge/models/edge-s)"
