# The README's commands. Each does all set-up on a fresh machine: a virtual environment (which
# sees an already-installed torch), torch itself when none is importable, and fastgan built from
# this checkout.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.fastgan-installed
MAX_JOBS ?= $(shell nproc)
export MAX_JOBS

.PHONY: demo test bench cuda-check build clean

# Trains DCGAN on scikit-learn's bundled digits (no download) and prints where the images are.
demo: build
	$(PY) -m fastgan train --data digits --out runs/digits

test: build
	$(PY) -m pytest -ra tests
	@$(MAKE) --no-print-directory cuda-check

# Prints every benchmark's tables; benchmarks/README.md has the method, and the command that also
# writes them into the documents.
bench: build
	$(PY) benchmarks/run.py

# Compiles every CUDA source for sm_80 and sm_90 (object files only); skipped without nvcc.
cuda-check: $(INSTALLED)
	PYTHON=$(PY) bash scripts/cuda_check.sh

# Incremental rebuild of fastgan._C after source changes (ninja only recompiles what changed).
build: $(INSTALLED)
	$(PY) setup.py -q build_ext --inplace

$(INSTALLED): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install setuptools wheel ninja numpy
	$(PY) -m pip install --no-build-isolation -e ".[test,train]"
	touch $@

clean:
	rm -rf build fastgan/_C*.so *.egg-info
