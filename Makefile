# `make demo` and `make test` need nothing installed first: they create .venv and install into it.
PYTHON ?= python3
# A GPU machine gets torch's CUDA build from PyPI; a CPU-only machine may hold a CPU build of this version locally.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/alignkit run recipes/demo/pipeline.yaml

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed-dev
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/reward_hh.py
	$(BIN)/python benchmarks/dpo_hh.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ppo_vs_trl112.py

clean:
	rm -rf outputs
