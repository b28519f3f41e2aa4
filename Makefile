# Two commands, both from a fresh machine:  make run   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
STUBS  := .stubs
STUB_VERSION := 1.29.0.post1
PYTEST_ARGS ?=

.PHONY: run test install bench clean

# Python side: the package (editable) and everything the tests use.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# The 32-bit WebAssembly MicroPython VM, from npm (Node.js comes from Debian if missing).
node_modules/.installed: package.json package-lock.json
	command -v node >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	npm ci --no-audit --no-fund
	touch $@

# MicroPython type stubs, kept out of the venv so they never shadow CPython's stdlib.
# tests/test_typecheck.py uses stdlib/ as mypy's custom typeshed (plus its _mpy_shed/) and
# unix/ rp2/ esp32/ as per-target MYPYPATH; the port stubs require stdlib-stubs ~=1.29.0.
$(STUBS)/.installed: Makefile $(STAMP)
	rm -rf $(STUBS)
	$(BIN)/pip install --quiet --no-deps --target $(STUBS)/stdlib 'micropython-stdlib-stubs~=1.29.0'
	$(BIN)/pip install --quiet --no-deps --target $(STUBS)/unix micropython-unix-stubs==$(STUB_VERSION)
	$(BIN)/pip install --quiet --no-deps --target $(STUBS)/rp2 micropython-rp2-rpi-pico-stubs==$(STUB_VERSION)
	$(BIN)/pip install --quiet --no-deps --target $(STUBS)/esp32 micropython-esp32-stubs==$(STUB_VERSION)
	touch $@

run: $(STAMP)
	$(BIN)/metal up

test: $(STAMP) node_modules/.installed $(STUBS)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP) node_modules/.installed
	$(BIN)/metal bench codec --json

clean:
	rm -rf $(VENV) node_modules $(STUBS) build dist *.egg-info .pytest_cache .mypy_cache .hypothesis
