PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Plugin distributions in this repository: each installed beside the daemon and tested on its own.
PLUGINS := plugins/example

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	for p in $(PLUGINS); do $(BIN)/pip install -q -e $$p || exit 1; done
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/shortdrama-worker --config config/local.toml serve

test: $(STAMP)
	$(BIN)/ruff check shortdrama_worker tests bench plugins
	$(BIN)/ruff format --check shortdrama_worker plugins
	$(BIN)/mypy
	for p in $(PLUGINS); do $(BIN)/mypy --strict $$(dirname $$p/*/__init__.py | grep -v /tests) || exit 1; done
	$(BIN)/pytest -q
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/pytest -q -p no:cacheprovider) || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check --fix shortdrama_worker tests bench plugins
	$(BIN)/ruff format shortdrama_worker plugins

bench: $(STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt  # Celery etc.: the baseline, not our runtime
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
