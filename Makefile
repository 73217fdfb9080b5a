# tpemu: the two set-up commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tpemu-installed
# Reinstall when a module is added or removed: the strict editable install links files one by one.
SOURCES := $(shell find tpemu proxy agent auth -name '*.py' -o -name py.typed -o -name '*.html' 2>/dev/null | sort)
ARGS   ?=

.PHONY: run test test-deps test-fast lint bench bench-full clean install reliability

install: $(STAMP)

$(BIN)/python:
	@tools/bootstrap-venv.sh "$(PYTHON)" "$(VENV)"

$(STAMP): pyproject.toml $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -m pip install -q -e '.[test,dev,engines]' --config-settings editable_mode=strict
	@echo "$(SOURCES)" > $@

## run: install, then start an all-in-one cluster on 127.0.0.1:3080 (ARGS="--config f.yaml" to change)
run: $(STAMP)
	$(BIN)/tpemu start $(ARGS)

## test: install tpemu and the real servers/clients the tests drive, then run every test
test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q -rs $(ARGS)

test-deps:
	@tools/install-test-deps.sh

## test-fast: the unit tests only (no real third-party servers)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	@VENV=$(VENV) tools/mypy.sh

## bench: the quick benchmark profile (under 3 minutes); bench-full: the full one
bench: $(STAMP)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install -q 'matplotlib>=3.7' >/dev/null
	$(BIN)/tpemu bench --profile quick $(ARGS)

bench-full: $(STAMP)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install -q 'matplotlib>=3.7' >/dev/null
	$(BIN)/tpemu bench --profile full $(ARGS)

## reliability: fuzzers (atheris), 10x load, faults, the authorization matrix; figures in RELIABILITY.md
reliability: $(STAMP) test-deps
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q '.[fuzz]' >/dev/null || \
		echo "atheris has no wheel here: the parser fuzz falls back to hypothesis"
	$(BIN)/python -m bench.reliability.run $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
