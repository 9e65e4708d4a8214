# Terrafuse: every target installs what it needs first, and skips what is already done.
#   make demo     set up, then run the main job headless on the bundled sample scene
#   make test     set up, then lint (ruff, bandit) and run the whole test suite
#   make qgis     open QGIS desktop with the plugin linked in
#   make package  build the zip that plugins.qgis.org takes (and the release assets it leaves out)
SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
QGIS_VENV := .venv-qgis
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"
APT_PACKAGES := qgis python3-qgis qgis-providers xvfb python3-venv
PLUGIN_NAME := terrafuse
export TERRAFUSE_PYTHON := $(CURDIR)/$(VENV)/bin/python

.PHONY: help system backend demo test lint unit plugin-tests qgis package lock clean

help:
	@sed -n 's/^#   //p' Makefile

# QGIS, its Python bindings and xvfb, from the distribution, only when one is missing.
system:
	@if command -v qgis_process.bin >/dev/null && command -v xvfb-run >/dev/null \
	    && $(SYSTEM_PYTHON) -c "import qgis.core, venv, ensurepip" 2>/dev/null; then :; else \
	  echo "Installing $(APT_PACKAGES) from apt"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends $(APT_PACKAGES) >/dev/null; fi

# Every pip takes wheels only (no package's build script runs) and checks each file against the sha256 of the
# hashed lock files in requirements/ (`make lock` writes them from the *.in files).
PIP_LOCKED = -m pip install -q --disable-pip-version-check --require-hashes --only-binary :all:

# The backend worker's isolated environment, pinned and hashed; the backend itself installed editable into it
# (the `terrafuse` command, and `python -m backend` from any folder), built by the lock's own setuptools.
$(VENV)/.installed: requirements/backend.txt pyproject.toml | system
	test -x $(VENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python $(PIP_LOCKED) -r requirements/backend.txt
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.installed
	$(VENV)/bin/python $(PIP_LOCKED) -r requirements/dev.txt
	touch $@

# The plugin's test environment: QGIS's own Python plus pytest, pytest-qt and mock, nothing else.
# --no-deps: the file pins every package, so pip cannot reach for a newer numpy or a PyQt5 wheel.
$(QGIS_VENV)/.installed: requirements/qgis-test.txt scripts/check_qgis_env.py | system
	test -x $(QGIS_VENV)/bin/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(QGIS_VENV)
	$(QGIS_VENV)/bin/python $(PIP_LOCKED) --no-deps -r requirements/qgis-test.txt
	$(QGIS_VENV)/bin/python scripts/check_qgis_env.py
	touch $@

backend: $(VENV)/.installed

demo: $(VENV)/.installed | system
	$(XVFB) $(SYSTEM_PYTHON) scripts/demo.py --out demo-output

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/bandit -q -c pyproject.toml -r __init__.py plugin backend

unit: $(VENV)/.dev-installed
	$(VENV)/bin/python -m pytest tests --ignore=tests/plugin

plugin-tests: $(VENV)/.installed $(QGIS_VENV)/.installed
	$(XVFB) $(QGIS_VENV)/bin/python -m pytest tests/plugin -p no:cacheprovider

test: lint unit plugin-tests

qgis: $(VENV)/.installed | system
	$(SYSTEM_PYTHON) scripts/link_plugin.py --name $(PLUGIN_NAME)
	qgis_process.bin plugins enable $(PLUGIN_NAME) >/dev/null 2>&1 || true
	qgis

package: | system
	$(SYSTEM_PYTHON) scripts/package.py --out dist

# Re-pin and re-hash requirements/*.txt from requirements/*.in with uv (itself installed by hash into a
# throwaway .lock-venv): one resolution for every platform and Python >= 3.11, the sha256 of every file PyPI
# lists for each pin. The current pins are kept where they still fit; `make lock LOCK_FLAGS=--upgrade` (or
# `--upgrade-package NAME`) moves them on. uv reads no pip.conf: a mirror is given as UV_INDEX_URL.
LOCK_VENV := .lock-venv
LOCK_FLAGS :=
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--only-binary :all: --custom-compile-command 'make lock' $(LOCK_FLAGS)
lock:
	rm -rf $(LOCK_VENV) && $(SYSTEM_PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python $(PIP_LOCKED) -r requirements/lock-tools.txt
	$(UV_COMPILE) requirements/backend.in -o requirements/backend.txt
	$(UV_COMPILE) requirements/dev.in -c requirements/backend.txt -o requirements/dev.txt
	$(UV_COMPILE) --no-deps requirements/qgis-test.in -o requirements/qgis-test.txt
	$(UV_COMPILE) requirements/lock-tools.in -o requirements/lock-tools.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(QGIS_VENV) dist demo-output .pytest_cache .ruff_cache
