# Two commands do everything on a fresh Debian machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DURATION ?=
STAMP := $(VENV)/.installed

.PHONY: run test test-timescaledb bench lint system-deps venv clean

run: system-deps venv
	$(BIN)/healthiot run $(if $(DURATION),--duration $(DURATION))

test: system-deps venv
	$(BIN)/python -m pytest

# The database suites again on TimescaleDB: TIMESCALEDB_BIN=<bin dir of a PostgreSQL with
# TimescaleDB> or TIMESCALEDB_URL=<running server> (see scripts/test-timescaledb.sh).
test-timescaledb: system-deps venv
	VENV=$(VENV) bash scripts/test-timescaledb.sh

bench: system-deps venv
	$(BIN)/python bench/bench_decisions.py
	$(BIN)/python bench/bench_storage.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_export.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy vitals aiopaho devices storage broker_bridge api firmware_sim healthiot

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "healthiot needs Python 3.11 or newer (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# PostgreSQL and Mosquitto binaries (the servers themselves are started by the project), and
# Debian's venv support, which its python3 package leaves out.
system-deps:
	@PYTHON=$(PYTHON) bash scripts/system-deps.sh

# As root, var/pg and var/mosquitto may be links to /var/lib/healthiot/<checkout>: that goes too.
clean:
	@for link in var/pg var/mosquitto; do \
		target=$$(readlink $$link) && case "$$target" in \
			/var/lib/healthiot/?*/*) rm -rf "$${target%/*}";; esac; done; true
	rm -rf $(VENV) var
