# tcia-mirror: every entry point a user or CI needs. Each target installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test demo check lint format bench bench-idc bench-bytes bench-probe bench-smoke bench-pg soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	rm -f $(VENV)/.stamp-*
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/tcia-mirror demo

check: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench:
	sh benchmarks/setup.sh
	benchmarks/.venv/bin/python benchmarks/run.py
	benchmarks/.venv/bin/python benchmarks/idc_bench.py --json benchmarks/results/idc.json

bench-idc:
	sh benchmarks/setup.sh
	benchmarks/.venv/bin/python benchmarks/idc_bench.py --json benchmarks/results/idc.json

# What each step of the ZIP byte path costs per GB on this machine (issue 9), deflated and stored
bench-bytes:
	sh benchmarks/setup.sh
	benchmarks/.venv/bin/python benchmarks/bytecost.py --level 1
	benchmarks/.venv/bin/python benchmarks/bytecost.py --level 0

# Issue 9's lead: ZIP bytes fetched by worker processes with blocking HTTP, beside tcia-mirror
bench-probe:
	sh benchmarks/setup.sh
	benchmarks/.venv/bin/python benchmarks/worker_http_probe.py --level 0
	benchmarks/.venv/bin/python benchmarks/worker_http_probe.py --level 1

bench-smoke: $(STAMP)
	$(PY) benchmarks/run.py --smoke --repeats 1 --results benchmarks/results/smoke

# PostgreSQL store (issue 11): a 1M-instance plan and status, round trips per file, and 1/2/4
# worker processes on the WAN simulator (a throwaway cluster; about 3 min on 2 cores)
bench-pg: $(STAMP)
	$(PY) benchmarks/pg_bench.py

# Not part of `make test`: ~50 kill -9 cycles under mixed faults on CT-sized data, then the
# engine state machine with 100 fresh random examples (a few minutes in all).
soak: $(STAMP)
	$(PY) tests/soak.py --kills 50
	TCIA_STATEFUL_EXAMPLES=100 $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_engine_stateful.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
