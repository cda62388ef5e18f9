# vdm — the two commands of the README: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
WORKDIR ?= workdir/fashion_mnist
CONFIG  ?= configs/fashion_mnist.py
FASHION_MNIST_DEB := /usr/share/datasets/fashion-mnist

.PHONY: venv test test-all train data debian-fashion-mnist benchmark clean

# The virtual environment, rebuilt whenever requirements.txt changes.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Debian's dataset-fashion-mnist is the offline source of Fashion-MNIST. Installed when missing and
# possible (root + apt); otherwise this says how to get it and the data step fails with the same advice.
debian-fashion-mnist:
	@if [ -d $(FASHION_MNIST_DEB) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)..."; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "WARNING: could not install dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist"; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', then 'make data'."; fi

# Prepare Fashion-MNIST once as TFDS array_record files (idempotent).
data: $(STAMP) debian-fashion-mnist
	$(PY) -m vdm.data prepare --dataset=fashion_mnist

test: $(STAMP) debian-fashion-mnist
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP) debian-fashion-mnist
	$(PY) -m pytest -q

train: data
	$(PY) -m vdm.main --config=$(CONFIG) --workdir=$(WORKDIR)

benchmark: $(STAMP)
	$(PY) experiments/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache
