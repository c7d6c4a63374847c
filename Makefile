# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each step is guarded by a stamp file so the second call is quick.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: run test install web-deps browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench,nmnist]'
	touch $@

install: $(STAMP) web-deps

# uPlot from the npm registry (package.json + lock file are committed; node_modules is not).
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web-deps: web/node_modules/.package-lock.json

# Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium; never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 || \
	  (sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -q chromium) >/dev/null 2>&1 || \
	  echo "could not install chromium: browser tests will be skipped with that reason"; }

run: install
	$(BIN)/snnmon serve --host $(HOST) --port $(PORT)

test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) web/node_modules .pytest_cache
