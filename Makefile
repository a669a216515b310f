# Two entry points from a fresh clone: `make demo` (nanotrt bench --task cola on the embedded demo model)
# and `make test` (what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ART ?= out/demo-artifact

.PHONY: venv demo test test-core test-slow lint typecheck footprint clean

$(BIN)/nanotrt: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins torch to the local CPU wheel, so nothing pulls a CUDA build
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,demo]'
	# type stubs for the TensorRT code (the tensorrt wheel itself cannot install without a GPU toolchain)
	$(BIN)/pip install -q --no-deps tensorrt-stubs
	touch $@

venv: $(BIN)/nanotrt

demo: venv
	$(BIN)/nanotrt bench --task cola

test: venv
	$(BIN)/ruff check nanotrt runtime pipeline engines calibration tests scripts benchmarks
	$(BIN)/python scripts/prepare_typings.py
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The device install: `pip install .` without extras (no torch) runs `nanotrt predict` on the committed tiny
# artifact and the runtime tests (the offline ones skip). Run from outside the checkout so that the repo's
# nanotrt/ folder does not shadow the installed package.
CORE ?= .venv-core
CORE_TESTS = test_runtime.py test_packaging.py test_concurrency.py test_residency_props.py
test-core:
	rm -rf $(CORE)
	$(PY) -m venv $(CORE)
	$(CORE)/bin/pip install -q --upgrade pip
	$(CORE)/bin/pip install -q -c constraints.txt . pytest hypothesis
	! $(CORE)/bin/python -c "import torch" 2>/dev/null
	cd /tmp && $(CURDIR)/$(CORE)/bin/nanotrt predict $(CURDIR)/tests/fixtures/tiny-artifact "a core install runs this" --exit patience=2 --memory-budget 2layers
	cd /tmp && $(CURDIR)/$(CORE)/bin/pytest -q -p no:cacheprovider $(addprefix $(CURDIR)/tests/,$(CORE_TESTS))

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check nanotrt runtime pipeline engines calibration tests scripts benchmarks

typecheck: venv
	$(BIN)/python scripts/prepare_typings.py
	$(BIN)/mypy

footprint: venv
	$(BIN)/python benchmarks/install_footprint.py

clean:
	rm -rf $(VENV) $(CORE) out
