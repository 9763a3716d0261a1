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
# when missing and possible; then the test-only npm packages, each from its committed lockfile
# whenever its node_modules is older than the lockfile: the TypeScript SDK agent's
# (tests/clients/ts) and axe-core, the console tests' accessibility engine
# (tests/shadow/ui/axe). Without npm the tests that need them are skipped (and fail under
# CI=true).
TS_AGENT := tests/clients/ts
CONSOLE_AXE := tests/shadow/ui/axe
NPM_DIRS := $(TS_AGENT) $(CONSOLE_AXE)

# Arize Phoenix, the tracing backend the tracing tests send traces to
# (tests/shadow/gateway/test_gateway_tracing.py), in a virtualenv of its own: its many
# dependencies stay out of the sidecar's. Made when missing; without it that test is skipped
# (and fails under CI=true).
PHOENIX_VENV := .venv-phoenix
PHOENIX_SPEC := arize-phoenix>=20.26,<21

tools:
	./.ci/system-tools
	@if [ ! -x $(PHOENIX_VENV)/bin/phoenix ]; then \
	    echo "installing $(PHOENIX_SPEC) in $(PHOENIX_VENV)"; \
	    $(PYTHON) -m venv $(PHOENIX_VENV) && \
	    $(PHOENIX_VENV)/bin/python -m pip install --quiet --upgrade pip && \
	    $(PHOENIX_VENV)/bin/python -m pip install --quiet '$(PHOENIX_SPEC)' || exit 1; \
	fi
	@if ! command -v npm >/dev/null 2>&1; then \
	    echo "warning: npm not found; $(NPM_DIRS) are not installed" >&2; \
	else \
	    for dir in $(NPM_DIRS); do \
	        if [ ! $$dir/node_modules/.package-lock.json -nt $$dir/package-lock.json ]; then \
	            echo "npm ci in $$dir"; \
	            npm ci --prefix $$dir --no-audit --no-fund --loglevel=error || exit 1; \
	        fi; \
	    done; \
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
	$(BIN)/python -m tests.bench.bench_segments
	$(BIN)/python -m tests.bench.bench_budgets

bench: bench-stats tools
	$(BIN)/python tests/bench/bench_store.py
	$(BIN)/python tests/bench/bench_service.py
	$(BIN)/python tests/bench/bench_route.py
	$(BIN)/python tests/bench/bench_gateway.py
	$(BIN)/python tests/bench/bench_kafka.py
	$(BIN)/python tests/bench/bench_replay.py
	$(BIN)/python -m tests.bench.bench_mirror
	$(BIN)/python -m tests.bench.bench_tracing

clean:
	rm -rf $(VENV) $(PHOENIX_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
