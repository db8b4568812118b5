# gtok developer targets. `make setup` once, then `make test-fast` while you work and
# `make test` (every test, with coverage) before you push.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast lint docs demo bench bench-gpu gpu-check gpu-bundle

setup:
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned, so pip does not pull a multi-GB CUDA build on CPU machines
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"

# Markers in pyproject.toml: test-fast leaves out the slow, subprocess, browser and vulkan
# tests. Coverage counts the test process only (gtok runs started in a subprocess are not).
test:
	$(PY) -m pytest -q --cov=gtok --cov-report=term:skip-covered

test-fast:
	$(PY) -m pytest -q -m "not slow and not subprocess and not browser and not vulkan"

# mypy's settings (the gtok package, strictness, untyped packages) are in pyproject.toml.
lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# docs/cli.md, the reference of every command and option, rendered from the Typer app
# (tests/test_docs.py fails when it is out of date).
docs:
	$(PY) tools/make_cli_docs.py

# Packs, encodes (default model), decodes and evaluates the photographs shipped in
# gtok/demo_photos; the report is in demo-out/report/ (a rerun replaces demo-out/).
demo:
	$(VENV)/bin/gtok demo -o demo-out

# Each benchmark script prints one JSON document on stdout (names on stderr). Modules
# starting with _ are shared helpers; raster_gpu.py and gpu_check.py need a CUDA GPU:
# `make bench-gpu`, `make gpu-check`.
BENCHES := $(filter-out bench/_% bench/raster_gpu.py bench/gpu_check.py,$(wildcard bench/*.py))

bench:
	@for script in $(BENCHES); do echo "== $$script" >&2; $(PY) $$script || exit 1; done

bench-gpu:
	$(PY) bench/raster_gpu.py

# The GPU acceptance check (kernels vs references, bf16 training, torchrun, encode/decode/
# eval, imagenet encode speed) in under 8 minutes; writes gpu-check.json, exits 1 without a GPU.
# Without $(VENV) (a bare CUDA machine with no network) it runs with the system python3 and
# torch, from the wheels `make gpu-bundle` put in $(GPU_BUNDLE) (tools/gpu_bundle.py).
GPU_BUNDLE ?= .gpu-bundle
GPU_CHECK_ARGS ?=

gpu-check:
	if [ -x $(PY) ]; then $(PY) bench/gpu_check.py --out gpu-check.json $(GPU_CHECK_ARGS); \
	else python3 tools/gpu_bundle.py run --bundle $(GPU_BUNDLE) --out gpu-check.json $(GPU_CHECK_ARGS); fi

gpu-bundle:
	$(PY) tools/gpu_bundle.py build --out $(GPU_BUNDLE)
