# Quick start: `make demo` then `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml setup.py src/tradetrace/events/_hotbus.c src/tradetrace/store/_prices.c \
		src/tradetrace/engine/_regimes.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,postgres,ray]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tradetrace run examples/momentum.yaml --trace

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/engine.py --bars 1000000 --peer-bars 100000

clean:
	rm -rf $(VENV) tradetrace-data .pytest_cache
