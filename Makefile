# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# `make run` installs only what serving needs; `make test` adds the test, benchmark and Ray extras, Debian's
# Chromium (browser tests) and nginx (deploy/nginx.conf is tested through it).
# Each step is guarded by a stamp file so the second call is quick.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: run test install install-test web-deps browser nginx bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install when pyproject.toml changes.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[test,bench,nmnist,ray]'
	touch $@

# What serving needs: the packages and the dashboard's npm libraries.
install: $(RUN_STAMP) web-deps

install-test: install $(TEST_STAMP)

# uPlot from the npm registry (package.json + lock file are committed; node_modules is not).
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web-deps: web/node_modules/.package-lock.json

# Debian packages for the tests, installed once (apt-get as root, else through sudo). A package that
# cannot be installed leaves its tests skipped, each saying why.
APT_INSTALL = (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1)) >/dev/null 2>&1 || \
	(sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -q $(1)) >/dev/null 2>&1

# Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium; never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(call APT_INSTALL,chromium) || \
	  echo "could not install chromium: browser tests will be skipped with that reason"; }

# Debian's nginx for tests/e2e/test_deploy_nginx.py (the test runs it on free ports as its own child).
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing Debian's nginx-light for the deploy tests"; \
	  $(call APT_INSTALL,nginx-light) || \
	  echo "could not install nginx: the nginx tests will be skipped with that reason"; }

run: install
	$(BIN)/snnmon serve --host $(HOST) --port $(PORT)

test: install-test browser nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) web/node_modules .pytest_cache
