# gtok developer targets. `make setup` once, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint

setup:
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned, so pip does not pull a multi-GB CUDA build on CPU machines
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"

test:
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
