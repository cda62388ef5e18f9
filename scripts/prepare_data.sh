#!/usr/bin/env bash
# Prepare Fashion-MNIST once, offline: Debian's dataset-fashion-mnist -> TFDS array_record.
# Idempotent: exits at once when the data set is already prepared.
#   DATA_DIR=...                 TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)
#   VDM_FASHION_MNIST_DIR=...    folder with the 4 IDX .gz files (default: Debian's)
#   PYTHON=...                   interpreter (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
SRC=${VDM_FASHION_MNIST_DIR:-$DEBIAN_DIR}
DATA_ARG=()
if [ -n "${DATA_DIR:-}" ]; then DATA_ARG=(--data_dir="$DATA_DIR"); fi

if "$PY" -c "import sys; from vdm.data import tfds_sets; sys.exit(0 if tfds_sets.is_prepared('fashion_mnist', sys.argv[1] or None) else 1)" "${DATA_DIR:-}"; then
  echo "fashion_mnist already prepared"
  exit 0
fi
if [ ! -f "$SRC/train-images-idx3-ubyte.gz" ] && [ "$SRC" = "$DEBIAN_DIR" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST files missing: run 'sudo apt-get install dataset-fashion-mnist', then this again." >&2
    exit 1
  fi
fi
if ! "$PY" -c "import tensorflow" >/dev/null 2>&1; then
  "$PY" -m pip install -q -r requirements-prepare.txt
fi
"$PY" -m vdm.tools.prepare_data --dataset=fashion_mnist "${DATA_ARG[@]}"
