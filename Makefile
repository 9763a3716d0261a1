# The only way anyone runs things here. Every target creates and uses the project's
# virtualenv (.venv) and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install tools demo lint format typecheck test test-fast pytest bench bench-stats clean dashboards

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,clients]'
	touch $(STAMP)

demo: install
	$(BIN)/shadow demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check shadow replay tests dashboards
	$(BIN)/ruff format --check shadow replay tests dashboards

format: install
	$(BIN)/ruff check --fix shadow replay tests dashboards
	$(BIN)/ruff format shadow replay tests dashboards

typecheck: install
	$(BIN)/mypy shadow replay tests dashboards

# Test-only system tools (Prometheus, promtool, Chromium, nginx, Node.js and npm), installed
# when missing and possible; then the TypeScript SDK agent's packages (tests/clients/ts), from
# its committed lockfile, whenever node_modules is older than the lockfile. Without npm the
# tests that need it are skipped (and fail under CI=true).
TS_AGENT := tests/clients/ts

tools:
	./.ci/system-tools
	@if ! command -v npm >/dev/null 2>&1; then \
	    echo "warning: npm not found; $(TS_AGENT) is not installed" >&2; \
	elif [ ! $(TS_AGENT)/node_modules/.package-lock.json -nt $(TS_AGENT)/package-lock.json ]; then \
	    echo "npm ci in $(TS_AGENT)"; \
	    npm ci --prefix $(TS_AGENT) --no-audit --no-fund --loglevel=error; \
	fi

pytest: install tools
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The quick loop while editing: the suite without the tests marked slow (real Kafka brokers,
# Prometheus, Chromium, Helm, worker processes, kill -9, long randomised streams, the
# README walkthrough); no lint, no typecheck. `make test` still runs everything.
test-fast: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# Regenerate the Grafana JSON (dashboards/grafana/) and the Helm chart's copies of the
# dashboards and rules (helm/shadow-sidecar/files/); tests fail when they are out of date.
dashboards: install
	$(BIN)/python -m dashboards.generate

bench-stats: install
	$(BIN)/python tests/bench/bench_stats.py

bench: bench-stats tools
	$(BIN)/python tests/bench/bench_store.py
	$(BIN)/python tests/bench/bench_service.py
	$(BIN)/python tests/bench/bench_route.py
	$(BIN)/python tests/bench/bench_gateway.py
	$(BIN)/python tests/bench/bench_kafka.py
	$(BIN)/python tests/bench/bench_replay.py
	$(BIN)/python -m tests.bench.bench_mirror

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
