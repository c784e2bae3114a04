# Every target creates .venv and installs what it needs, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-unit test-e2e lint test-matrix bench bench-peers clean lab test-browser test-s3

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m elastic_proxy.demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/browser -m "not s3_slow" tests

# Checkpoints through S3 (moto's server on loopback): all of them, with the fault and network-namespace tests.
test-s3: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e/test_s3_store.py tests/unit/store/test_s3_pure_logic.py

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e

# The whole suite under every Python 3.9-3.13 that pyenv has, each in its own venv.
test-matrix:
	bash scripts/test_matrix.sh

bench: $(STAMP)
	bash scripts/run_bench.sh

# elastic-proxy against ElasticKernel (PyPI elastic-kernel, newest, in a venv of its own) and plain ipykernel.
PEERS_VENV ?= .venv-peers
bench-peers: $(STAMP)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade elastic-kernel
	BENCH_ONLY=peers_bench BENCH_TARGET="make bench-peers" BENCH_ARGS="--peers-python $(PEERS_VENV)/bin/python" \
	  BENCH_REPORT=bench/results/peers-$$(date -u +%Y-%m-%d).md bash scripts/run_bench.sh

# JupyterLab and a real browser (make lab, make test-browser): the `browser` extra, apart from `test` to keep it light.
BROWSER_STAMP := $(VENV)/.browser-stamp
$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,browser]'
	touch $(BROWSER_STAMP)

# JupyterLab from .venv on 127.0.0.1 with the elastic kernel and examples/elastic-demo.ipynb (LAB_PORT, LAB_TOKEN).
lab: $(BROWSER_STAMP)
	bash scripts/lab.sh

# JupyterLab in Debian's headless chromium (installed by scripts/install_browser.sh); screenshots land in
# build/test-browser/artifacts/ (ELASTIC_PROXY_DOCS_IMAGES=docs/images refreshes the README's).
test-browser: $(BROWSER_STAMP)
	bash scripts/install_browser.sh
	mkdir -p build
	$(BIN)/python -m pytest -q -p no:cacheprovider --basetemp=build/test-browser tests/browser

# The README's library coverage table (coverage_table/): specimen libraries go into .venv, not the project's deps.
COVERAGE_LIBS := $(VENV)/.coverage-libs-stamp
COVERAGE_HEAVY := $(VENV)/.coverage-heavy-stamp
.PHONY: coverage-table coverage-check

$(COVERAGE_LIBS): $(STAMP) coverage_table/requirements.txt
	$(BIN)/python -m pip install -q -r coverage_table/requirements.txt
	touch $@

$(COVERAGE_HEAVY): $(COVERAGE_LIBS) coverage_table/requirements-heavy.txt
	$(BIN)/python -m pip install -q -r coverage_table/requirements-heavy.txt
	touch $@

# Every specimen through real kernels; rewrites README.md's table and coverage_table/results.json.
coverage-table: $(COVERAGE_HEAVY)
	$(BIN)/python -m coverage_table

# CI: the same without the heavy libraries (their rows from coverage_table/results.json); fails if README.md is stale.
coverage-check: $(COVERAGE_LIBS)
	$(BIN)/python -m coverage_table --check --skip-heavy

clean:
	rm -rf $(VENV) .venv-* build *.egg-info
