# Two commands: `make demo` runs the pipeline end to end; `make test` runs the tests.
# Both create .venv on first use (see scripts/setup_env.sh).
PY := .venv/bin/python
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	@bash scripts/demo.sh $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
