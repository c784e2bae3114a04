# Every target creates .venv and installs what it needs, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-unit test-e2e lint test-matrix bench clean

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
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e

# The whole suite under every Python 3.9-3.13 that pyenv has, each in its own venv.
test-matrix:
	bash scripts/test_matrix.sh

bench: $(STAMP)
	bash scripts/run_bench.sh

clean:
	rm -rf $(VENV) .venv-* build *.egg-info
