# The README's two commands: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/quickstart.yaml

.PHONY: install run test lint bench bench-tools docs clean ops-tools drill

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

run: install
	$(BIN)/workflow run $(CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint ops-tools
	$(BIN)/pytest -q

# promtool and prometheus from Debian's package, unpacked under .venv/ops (tests/ops and drills/ use them).
ops-tools: $(VENV)/ops/usr/bin/promtool

$(VENV)/ops/usr/bin/promtool: | install
	bash tests/ops/install_prometheus.sh $(VENV)/ops

# Runbook drills: a real Prometheus scrapes real engines with the real alert rules (only `for:` shortened).
drill: install ops-tools
	$(BIN)/pytest -q -p no:cacheprovider drills

# wrk (the HTTP load generator of bench/http_pipeline.py) from Debian's package, unpacked under .venv/bench.
bench-tools: | install
	bash bench/install_wrk.sh $(VENV)/bench

bench: install bench-tools
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/http_pipeline.py
	$(BIN)/python bench/durable.py
	$(BIN)/python bench/reload.py
	$(BIN)/python bench/broker_throughput.py

docs: install
	$(BIN)/python -c 'from workflow_engine.registry.builtins import default_registry; from workflow_engine.registry.docs import reference_markdown; print(reference_markdown(default_registry()), end="")' > docs/reference.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
