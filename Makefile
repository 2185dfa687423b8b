# Two commands: `make demo` runs the pipeline end to end; `make test` runs the checks and tests.
# Both create .venv on first use (see scripts/setup_env.sh).
PY := .venv/bin/python
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-fast lint bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	@bash scripts/demo.sh $(DEMO_OUT)

# what CI runs: lint and types, then every test (the slowest 15 listed)
test: setup lint
	$(PY) -m pytest -q --durations=15

# the tests that train nothing for long (the others are marked slow), two worker processes
test-fast: setup lint
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: setup
	$(PY) -m ruff check src tests benchmarks tools scripts
	$(PY) -m mypy

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
