# `make demo`: set up .venv and run the main job. `make test`: set up .venv and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/ci.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(VENV)/bin/safeneurons demo

test: setup
	$(PY) -m pytest tests -q -ra $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit -q -ra $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
