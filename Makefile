# `make demo` and `make test` each create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --no-compile

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev,video]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mmreward demo --out runs/demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_batched_scoring.py

.PHONY: venv demo test lint bench
