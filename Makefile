# Two entry points from a fresh clone: `make demo` (nanotrt bench --task cola on the embedded demo model)
# and `make test` (what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ART ?= out/demo-artifact

.PHONY: venv demo test test-slow lint typecheck clean

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

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check nanotrt runtime pipeline engines calibration tests scripts benchmarks

typecheck: venv
	$(BIN)/python scripts/prepare_typings.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out
