# gtok developer targets. `make setup` once, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo bench bench-gpu

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

# Packs, encodes (default model), decodes and evaluates the photographs shipped in
# gtok/demo_photos; the report is in demo-out/report/ (a rerun replaces demo-out/).
demo:
	$(VENV)/bin/gtok demo -o demo-out

# Each benchmark script prints one JSON document on stdout (names on stderr). Modules
# starting with _ are shared helpers; raster_gpu.py needs a CUDA GPU: `make bench-gpu`.
BENCHES := $(filter-out bench/_% bench/raster_gpu.py,$(wildcard bench/*.py))

bench:
	@for script in $(BENCHES); do echo "== $$script" >&2; $(PY) $$script || exit 1; done

bench-gpu:
	$(PY) bench/raster_gpu.py
