#!/usr/bin/env bash
# The GPU check of the VDM paper config, under 8 minutes on one GPU:
#   1. experiments/benchmark.py's GPU rows: compile seconds and step time for 2/8/32 layers
#      (unrolled vs nn.scan), the paper config (width 128, 32 layers, batch 128) in float32 and
#      bfloat16 with images/s and MFU against the reference's 886 images/s, and the input pipeline;
#   2. a 2-minute training run of configs/cifar10.py printing its learning curve (train loss in
#      bits/dim every 50 steps) and the test bits/dim at the end.
# Data: CIFAR-10 when it is prepared (or its array cache is) under $TFDS_DATA_DIR; else the same
# network and optimizer on Fashion-MNIST (the VDM UNet has no downsampling, so any image size runs).
#
#   bash scripts/gpu_check.sh                 # on a GPU machine (python: $PYTHON, default python3)
#   GPU_CHECK_TINY=1 bash scripts/gpu_check.sh   # a one-minute CPU rehearsal at a tiny size
# Output: printed, and written under $OUT (default /tmp/gpu_check): benchmark_gpu.md, train.log, curve.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then     # packages the GPU image lacks, carried as wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "import jax; print('devices:', jax.devices(), 'jax', jax.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
date -u

if [ -n "${GPU_CHECK_TINY:-}" ]; then
  BENCH=(--size cpu --sections paper,pipeline --repeats 1 --iters 1)
  CONFIG=configs/cifar10.py:small STEPS=20 LOG_EVERY=5 TRAIN_LIMIT=300
else
  BENCH=(--size gpu --sections paper,depth,pipeline --repeats 3 --iters 5)
  CONFIG=configs/cifar10.py STEPS=${GPU_CHECK_STEPS:-800} LOG_EVERY=50 TRAIN_LIMIT=220
fi

echo "== 1. benchmark (${BENCH[*]})"
timeout 230 "$PY" experiments/benchmark.py "${BENCH[@]}" || echo "benchmark: exit $? (timeout 230 s?)"
cp experiments/results/benchmark_gpu.md "$OUT/" 2>/dev/null || cp experiments/results/benchmark.md "$OUT/" || true

echo "== 2. training $CONFIG for $STEPS steps (at most $TRAIN_LIMIT s)"
DATA=()
if ! "$PY" -c "import sys; from vdm import data_tfds; sys.exit(0 if data_tfds.is_prepared('cifar10') else 1)"; then
  echo "CIFAR-10 is not prepared here: the paper network and optimizer on Fashion-MNIST instead"
  DATA=(--config.data.dataset=fashion_mnist)
fi
WD="$OUT/train"
rm -rf "$WD"
timeout "$TRAIN_LIMIT" "$PY" -m vdm.main --config="$CONFIG" --workdir="$WD" "${DATA[@]}" \
  --config.training.num_steps="$STEPS" --config.training.log_every="$LOG_EVERY" \
  --config.training.eval_every="$STEPS" --config.training.checkpoint_every="$STEPS" \
  --config.training.steps_per_call=1 --config.sampling.num_steps=50 --config.sampling.num_samples=16 \
  2>&1 | tee "$OUT/train.log" | grep -v "^ *\"" || echo "training: exit $? (timeout $TRAIN_LIMIT s?)"
"$PY" - "$WD" <<'EOF' | tee "$OUT/curve.txt"
import json, math, sys
from vdm.metrics import read_metrics
dataset = json.load(open(f"{sys.argv[1]}/config.json"))["data"]["dataset"]
dims = {"cifar10": 32 * 32 * 3}.get(dataset, 28 * 28)
print(f"{'step':>6} {'train loss (bits/dim)':>22} {'steps/s':>8} {'test bpd':>9}   ({dataset})")
for r in read_metrics(sys.argv[1]):
    if r.get("train/loss") is not None:
        print(f"{r['step']:>6} {r['train/loss'] / (dims * math.log(2)):>22.4f} {r.get('train/steps_per_sec') or 0:>8.2f}")
    if r.get("eval/bpd") is not None:
        print(f"{r['step']:>6} {'':>22} {'':>8} {r['eval/bpd']:>9.4f}")
EOF
date -u
