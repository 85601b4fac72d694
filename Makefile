# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-local test gpu-test lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[service,dev]'
	@touch $(STAMP)

# The embedded stack (API, worker, reconciler, MLflow UI): submit over HTTP, watch, table.
demo: $(STAMP)
	$(BIN)/python -m client.demo examples/demo-grid.yaml --data-dir regbench-data/demo

# The same benchmark in this process, without the service (faster).
demo-local: $(STAMP)
	$(BIN)/regbench run examples/demo-grid.yaml --data-dir regbench-data/demo-local

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	REGBENCH_RELIABILITY_OUT=regbench-data/reliability $(BIN)/python -m pytest -q

# On a machine with a CUDA GPU: the GPU path end to end (timings printed; skipped without CUDA).
gpu-test: $(STAMP)
	$(BIN)/python -m pytest -m gpu tests/gpu -v

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every benchmark section (tens of minutes on 2 CPU cores): bench/results.json and .md.
# One part: `$(BIN)/python -m bench --only step_cost`; a smoke run: `... -m bench --quick`.
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) regbench-data .pytest_cache .ruff_cache
