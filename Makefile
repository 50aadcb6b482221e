# The two commands a newcomer needs (see README): `make run` and `make test`.
# Both run the same idempotent bootstrap first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bootstrap lint lock study bench gate clean

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	$(BIN)/draftnet run

# Every core, up to 4 workers; the emulations and the real models one at a time on one of them
# (tests/conftest.py). A plain `pytest` runs the suite in one process.
test: bootstrap
	$(BIN)/python -m pytest -n auto --maxprocesses 4

# Re-resolve requirements/ on purpose, keeping the pins that still fit; UPGRADE=1 resolves
# every package afresh (an upgrade: rerun the benchmarks it touches).
lock: bootstrap
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

# The gross-regression gate: the embedded pair's step times against this machine's calibration.
gate: bootstrap
	$(BIN)/python scripts/bench_gate.py

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

study: bootstrap
	$(BIN)/draftnet study dipsd-paper --out study/dipsd-paper

bench: bootstrap
	$(BIN)/python scripts/bench_planner.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
