# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR ?= runs/demo

.PHONY: install test test-fast lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the package metadata changes.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,mkl]'
	$(PY) -m tbptt.layers.kernels
	$(PY) -m tbptt.experiments.data.kernels
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m flake8 tbptt trainer layers experiments benchmarks tests

demo: $(STAMP)
	$(PY) -m tbptt.experiments.demo --model_dir=$(DEMO_DIR)

bench: $(STAMP)
	$(PY) benchmarks/lstm_layers.py
	$(PY) benchmarks/trainer.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
