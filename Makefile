# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-local test chromium gpu-test lint format bench clean

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

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	REGBENCH_RELIABILITY_OUT=regbench-data/reliability $(BIN)/python -m pytest -q

# The dashboard's browser test drives Debian's chromium (Playwright cannot download its own
# browser without its CDN): installed here when missing and we may (root, or sudo -n);
# else the test says how (it skips, and fails in CI).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "chromium is missing and this user cannot install it (not root, no sudo -n):" \
	    "the dashboard's browser test will skip (fail in CI); apt-get install chromium"; exit 0; fi; \
	  echo "installing chromium (apt-get) for the dashboard's browser test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium \
	    >/dev/null || echo "apt-get could not install chromium: the browser test will say so"; }

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
