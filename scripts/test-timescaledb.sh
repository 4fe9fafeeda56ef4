#!/usr/bin/env bash
# The database suites (integration, faults, e2e) again, on TimescaleDB. Give one of:
#   TIMESCALEDB_BIN  bin directory of a PostgreSQL that has TimescaleDB installed (the suite
#                    starts its own clusters from it, TimescaleDB preloaded), e.g. the one
#                    ../shared/timescaledb/install.sh prints;
#   TIMESCALEDB_URL  a running TimescaleDB-enabled server whose user may create databases
#                    (+ TIMESCALEDB_PASSWORD). Tests that start or kill a cluster of their
#                    own (faults, the run and simulate commands) then use TIMESCALEDB_BIN if
#                    also given, Debian's PostgreSQL otherwise.
# The pass fails, rather than test native partitions green, if the server is not on
# TimescaleDB (HEALTHIOT_TEST_ENGINE).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TIMESCALEDB_BIN:-}" ] && [ -z "${TIMESCALEDB_URL:-}" ]; then
  echo "make test-timescaledb needs TIMESCALEDB_BIN=<bin dir> or TIMESCALEDB_URL=<url>" >&2
  exit 2
fi
if [ -n "${TIMESCALEDB_BIN:-}" ]; then
  [ -x "$TIMESCALEDB_BIN/postgres" ] || { echo "no postgres in $TIMESCALEDB_BIN" >&2; exit 2; }
  export HEALTHIOT_PG_BIN_DIR=$TIMESCALEDB_BIN
fi
if [ -n "${TIMESCALEDB_URL:-}" ]; then
  export HEALTHIOT_TEST_DATABASE_URL=$TIMESCALEDB_URL
  export HEALTHIOT_TEST_DATABASE_PASSWORD=${TIMESCALEDB_PASSWORD:-}
fi
export HEALTHIOT_TEST_ENGINE=timescaledb
exec "${VENV:-.venv}/bin/python" -m pytest tests/integration tests/faults tests/e2e "$@"
