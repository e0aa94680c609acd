# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install services down demo test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	scripts/services up

down:
	scripts/services down

# Starts the services it needs, runs the demo, and stops the services again unless they were
# already running before.
demo: install
	@before=$$(scripts/services status | grep -c ': up at'); \
	scripts/services up || exit 1; \
	$(VENV)/bin/detector demo; rc=$$?; \
	if [ "$$before" -lt 2 ]; then scripts/services down; fi; \
	exit $$rc

test: install
	scripts/services up
	$(PY) -m pytest

check: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/check

bench: install
	scripts/services up
	$(PY) benches/bench_ingest.py
	$(PY) benches/bench_windows.py

clean:
	scripts/services down
	rm -rf .run .detector-data
