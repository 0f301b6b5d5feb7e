# fedloom: `make demo` runs the main job, `make test` runs the tests; each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Dev extras, Ray (for the multi-node test), ONNX (for the export test), TensorBoard and MLflow
# (for the trackers' tests) and the CPU build of PyTorch (torch>=2.2,<2.14 admits the local
# 2.13.0 CPU wheel); the demo needs only PyTorch.
EXTRAS ?= torch,ray,onnx,tensorboard,mlflow,dev
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-fast test-slow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: $(VENV)/.installed-torch
	$(BIN)/fedloom simulate examples/demo.toml --out $(DEMO_OUT) --overwrite
	@echo "the fedloom command is in $(BIN)/: run it as $(BIN)/fedloom, or activate the" \
		"environment first with: . $(BIN)/activate"

# every test, the multi-process ones (marked slow) included
test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

# fedloom's simulation throughput alone; drop --skip-flower to run Flower side by side
# (builds its environment in /tmp/flower-bench once; several minutes).
bench: install
	$(BIN)/python benchmarks/simulation_throughput.py --clients 10 100 1000 --rounds 5 --skip-flower
