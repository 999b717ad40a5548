# paynorm: `make demo` runs the whole job on a local cluster, `make test` runs the test suite.
# Every target sets up what it needs, idempotently (venv, packages, PostgreSQL + wal2json, cluster).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install postgres prometheus chromium demo test accuracy clean dev-up dev-down lint help

help:
	@echo "make demo   - local cluster, sample lake, the pipeline, a summary"
	@echo "make test   - the test suite against real PostgreSQL clusters it starts itself"
	@echo "make accuracy - score the built-in rules on labelled real provider payloads (paynorm eval)"
	@echo "make install, make dev-up, make dev-down, make clean"

# setup.py compiles consumer/decode.py (mypyc): an edited decoder is rebuilt at the next make target.
$(STAMP): pyproject.toml constraints.txt setup.py consumer/decode.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

postgres:
	@bash scripts/ensure-postgres.sh

prometheus:
	@bash scripts/ensure-prometheus.sh

# Headless Chromium renders the HTML report in tests/test_report.py (screenshot and DOM).
chromium:
	@bash scripts/ensure-chromium.sh

dev-up: install postgres
	$(BIN)/paynorm dev up

dev-down: install
	$(BIN)/paynorm dev down

demo: install postgres
	@bash scripts/demo.sh

# Three workers (pytest-xdist): each starts its own lake and warehouse clusters; most tests wait on
# PostgreSQL, dbt, Chromium or a child process, so on two cores a third worker still shortens the
# wall time. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 3
test: install postgres prometheus chromium
	$(BIN)/python -m pytest -q -rs --durations=20 -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Labelled real payloads: the shared corpus when this checkout sits beside it, else the copy in tests/corpus.
CORPUS ?= $(firstword $(wildcard ../shared/corpus/real_payloads.jsonl) tests/corpus/real_payloads.jsonl)

accuracy: install postgres
	$(BIN)/paynorm eval $(CORPUS) --min-coverage 95 --min-status 99

clean:
	-$(BIN)/paynorm dev down --destroy
	rm -rf $(VENV) *.egg-info .pytest_cache target logs

# Benchmarks: own cluster and data, results in bench/results/ and bench/README.md. Not run in CI.
.PHONY: bench bench-quick
bench: install postgres
	$(BIN)/python bench/run.py --full

bench-quick: install postgres
	$(BIN)/python bench/run.py --quick

# constraints.txt: the exact versions of the runtime dependencies in the dev venv, for the image and
# server installs (pip install --constraint constraints.txt); tests/test_deploy.py checks it is current.
.PHONY: constraints
constraints: install
	$(BIN)/python deploy/constraints.py

# The command line reference: docs/cli.md from the click definitions (tests/test_cli_reference.py checks it).
.PHONY: cli-docs
cli-docs: install
	$(BIN)/python scripts/gen_cli_docs.py
