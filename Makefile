# One command runs the service (`make run`), one runs the tests (`make test`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# pyenv resolves .python-version (3.13); fall back to any python3.13 on PATH.
BASE_PYTHON ?= $(shell (pyenv which python 2>/dev/null) || command -v python3.13 || command -v python3)
STAMP := $(VENV)/.installed

.PHONY: install run migrate test test-random faults lint typecheck check services bench lock clean

# npm packages of the JS/TS plugin runtime (the transpiler, bundles of Node's built-ins): exact
# versions in scripts/js-vendor/package.json, integrity hashes in its package-lock.json (checked
# by `npm ci`); nothing is fetched at run time.
JS_VENDOR := plugin_server/plugins/js/vendor
JS_VENDOR_STAMP := $(JS_VENDOR)/.vendored

install: $(STAMP) $(JS_VENDOR_STAMP)

$(JS_VENDOR_STAMP): scripts/vendor-js.sh scripts/js-vendor/package-lock.json scripts/js-vendor/build.mjs $(wildcard plugin_server/plugins/js/node/*.js)
	@bash scripts/vendor-js.sh $(JS_VENDOR)

# The project itself is installed too (editable, without its already pinned dependencies), so
# `python -m plugin_server`, `plugin_server.testing` and the `posthog_plugin` SDK work from any
# folder, e.g. from a plugin's own. "compat" mode puts the checkout on sys.path with a .pth file:
# mypy follows that (not the import hook of the default mode) to type-check plugins.
$(STAMP): requirements-dev.lock pyproject.toml
	@test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 13), f"Python >= 3.13 needed, got {sys.version}"'
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . --config-settings editable_mode=compat
	@touch $(STAMP)

services:
	@bash scripts/ensure-services.sh

# `make run` talks to the local Postgres and Redis unless told otherwise.
run migrate: export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/posthog
run migrate: export REDIS_URL ?= redis://127.0.0.1:6379

migrate: install services
	$(PY) -m plugin_server --migrate

run: install services
	$(PY) -m plugin_server --migrate
	$(PY) -m plugin_server

test: install services
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The same suite in a random order (pytest-randomly); PYTEST_ARGS=--randomly-seed=N repeats one.
test-random: install services
	$(PY) -m pytest -q -p randomly $(PYTEST_ARGS)

# The fault suite alone (part of `make test` too): own Postgres cluster and Redis restarted, the
# server SIGKILLed, malformed messages fuzzed. Needs the Debian postgresql server binaries.
faults: install services
	$(PY) -m pytest -q tests/faults $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check plugin_server sandbox posthog_plugin examples tests bench
	$(VENV)/bin/ruff format --check plugin_server sandbox posthog_plugin examples tests bench

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

bench: install services
	$(PY) -m bench $(BENCH_ARGS)

# Re-resolve the pinned lock files after changing pyproject.toml.
lock: install
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.13 --generate-hashes -o requirements.lock -q
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.13 --generate-hashes -o requirements-dev.lock -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
