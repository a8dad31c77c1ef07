# Everything a fresh clone needs: `make demo`, `make test`, `make lint`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean chaos chaos-long bench bench-peers

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

# The fault-injection run (docs/reliability.md); `make test` runs its short form too.
chaos: $(STAMP)
	for database in sqlite mariadb postgresql; do \
		$(BIN)/python -m bench.chaos --database $$database || exit 1; done

chaos-long: $(STAMP)
	for database in sqlite mariadb postgresql; do \
		$(BIN)/python -m bench.chaos --long --database $$database \
			--json bench/chaos-long-$$database.json || exit 1; done

# Performance (docs/benchmarks.md), on an otherwise idle machine: batchjob on the three
# databases by the peers' method, then its own figures; bench-peers adds the peer queues.
BENCH_OUT ?= bench/results
bench: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/peers/run.py --jobs 2000 --rounds 3 \
		--peers floor-sqlite,batchjob-sqlite,floor-mariadb,batchjob-mariadb,floor-postgresql,batchjob-postgresql \
		--json $(BENCH_OUT)/batchjob-as-a-peer.json
	$(BIN)/python -m bench.suite --json $(BENCH_OUT)/suite.json

bench-peers: $(STAMP)
	mkdir -p $(BENCH_OUT)
	bash bench/peers/setup.sh
	bench/peers/.venv/bin/python bench/peers/run.py --jobs 2000 --rounds 3 --json $(BENCH_OUT)/peers.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo
