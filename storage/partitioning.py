"""Time partitioning of the segments table: TimescaleDB when the extension is there, native
PostgreSQL range partitions managed here otherwise. Same table name, columns and queries;
this module is the only place that knows which one is in use.

- TimescaleDB: ``segments`` becomes a hypertable on ``start_at`` with 7-day chunks;
  retention drops whole chunks (``drop_chunks``).
- Native: ``segments`` becomes a table partitioned by month on ``start_at``; the
  maintenance job creates the months ahead of time and retention detaches and drops whole
  months. A DEFAULT partition catches a row no month was made for, so an insert never fails.

Both need every unique key of ``segments`` to hold ``start_at`` (PostgreSQL and TimescaleDB
refuse others), and ``segments`` must not be the target of a foreign key (TimescaleDB before
2.16 refuses those): the migrations give the plain table such keys (020), and the conversion
keeps its keys and indexes as they are, names included, so that both paths end with the same
ones. tests/integration/test_partitioning.py checks both rules on the plain schema.
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg

log = logging.getLogger(__name__)

TABLE, TIME_COLUMN = "segments", "start_at"  # the one table partitioned by time
CHUNK_INTERVAL = "7 days"
MONTHS_AHEAD = 2
MONTHS_BEHIND = 2  # the acceptance window reaches 30 days back: one month is the minimum


def month_start(moment: dt.datetime) -> dt.datetime:
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def partition_name(month: dt.datetime) -> str:
    return f"segments_{month:%Y%m}"


async def mode(conn: asyncpg.Connection) -> str:
    """'timescaledb', 'native' or 'plain' (not converted yet)."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        hyper = await conn.fetchval(
            "SELECT 1 FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'segments'")
        if hyper:
            return "timescaledb"
    partitioned = await conn.fetchval(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
        " WHERE c.relname = 'segments'")
    return "native" if partitioned else "plain"


async def timescale_available(conn: asyncpg.Connection) -> bool:
    """The server offers TimescaleDB and has it preloaded: its control file alone (what
    pg_available_extensions lists) is not enough, as CREATE EXTENSION then fails with
    "must be preloaded". Created already in this database: available (only a preloaded
    server lets it be created). Only a superuser may read the preload setting: the owner
    role that converts ``segments`` finds the extension made by the administrator before
    (storage/migrate.py), or takes native partitions."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return True
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the outer one usable
            return bool(await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM pg_available_extensions
                                  WHERE name = 'timescaledb')
                   AND 'timescaledb' = ANY (string_to_array(
                       replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"""))
    except asyncpg.InsufficientPrivilegeError:
        return False


async def _to_hypertable(conn: asyncpg.Connection) -> bool:
    """Make ``segments`` a hypertable; False (nothing changed) when the extension cannot be
    created after all (say, its versioned library is missing): native partitions then.
    Its default index on the time column is not made: the native path has none, and
    segments_by_patient_metric_time serves every time-bounded read."""
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the outer one usable
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        log.warning("TimescaleDB offered but not usable (%s): native partitions instead",
                    type(exc).__name__)
        return False
    await conn.execute(
        f"SELECT create_hypertable('{TABLE}', '{TIME_COLUMN}', chunk_time_interval"
        f" => interval '{CHUNK_INTERVAL}', create_default_indexes => false,"
        " migrate_data => true)")
    return True


async def prepare(conn: asyncpg.Connection, now: dt.datetime | None = None) -> str:
    """Convert ``segments`` once (called after the migrations, under their lock) and make
    sure the months around ``now`` exist. Returns the mode in use."""
    now = now or dt.datetime.now(dt.UTC)
    current = await mode(conn)
    if current == "plain":
        async with conn.transaction():
            if await timescale_available(conn) and await _to_hypertable(conn):
                current = "timescaledb"
            else:
                await _to_native(conn, now)
                current = "native"
        log.info("segments partitioned: %s", current)
    if current == "native":
        await ensure_months(conn, now)
    return current


async def _to_native(conn: asyncpg.Connection, now: dt.datetime) -> None:
    """Swap the plain table for a partitioned one with the same columns, keys and indexes.

    LIKE copies columns, defaults and checks; keys and indexes are made again from the plain
    table's own definitions (LIKE ... INCLUDING INDEXES would rename them), so an index a
    later migration adds comes along without this code knowing about it."""
    keys = await conn.fetch(
        """SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
           WHERE conrelid = 'segments'::regclass AND contype IN ('p', 'u', 'f')""")
    indexes = await conn.fetch(
        """SELECT c.relname, pg_get_indexdef(i.indexrelid) AS definition
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE i.indrelid = 'segments'::regclass AND NOT EXISTS (
               SELECT 1 FROM pg_constraint k
               WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid)""")
    await conn.execute("ALTER TABLE segments RENAME TO segments_unpartitioned")
    # Index names are per schema: the old table's give theirs up for the new table.
    old = await conn.fetch("SELECT indexrelid::regclass::text AS name FROM pg_index"
                           " WHERE indrelid = 'segments_unpartitioned'::regclass")
    for n, row in enumerate(old):
        await conn.execute(f"ALTER INDEX {row['name']} RENAME TO segments_unpartitioned_{n}")
    await conn.execute(f"""
        CREATE TABLE segments (LIKE segments_unpartitioned INCLUDING ALL EXCLUDING INDEXES)
        PARTITION BY RANGE ({TIME_COLUMN})""")
    for key in keys:
        await conn.execute(
            f'ALTER TABLE segments ADD CONSTRAINT "{key["conname"]}" {key["definition"]}')
    for index in indexes:
        await conn.execute(index["definition"])  # "CREATE INDEX <name> ON public.segments ..."
    await conn.execute("CREATE TABLE segments_default PARTITION OF segments DEFAULT")
    lo = await conn.fetchval("SELECT min(start_at) FROM segments_unpartitioned")
    first = month_start(lo) if lo is not None else month_start(now)
    await ensure_months(conn, now, since=min(first, add_months(month_start(now),
                                                               -MONTHS_BEHIND)))
    await conn.execute("INSERT INTO segments SELECT * FROM segments_unpartitioned")
    await conn.execute("DROP TABLE segments_unpartitioned")


async def ensure_months(conn: asyncpg.Connection, now: dt.datetime,
                        since: dt.datetime | None = None) -> list[str]:
    """Create the monthly partitions from ``since`` (default: two months back) to two
    months ahead; a month that already has rows in the default partition is left there."""
    month = since or add_months(month_start(now), -MONTHS_BEHIND)
    last = add_months(month_start(now), MONTHS_AHEAD)
    made = []
    while month <= last:
        # The owner's function (migration 100): the services may not create tables.
        outcome = await conn.fetchval("SELECT segments_create_month($1)", month)
        if outcome == "stray":
            log.warning("rows for %s sit in segments_default; month not created",
                        f"{month:%Y-%m}")
        elif outcome == "made":
            made.append(partition_name(month))
        month = add_months(month, 1)
    return made


async def drop_before(conn: asyncpg.Connection, cutoff: dt.datetime) -> int:
    """Retention: remove segments that start before ``cutoff``, whole partitions or chunks
    where possible (cheap, no dead rows), row by row only in the part that straddles it.
    Returns the number of whole partitions or chunks dropped."""
    # The owner's function (migration 100): drop_chunks with TimescaleDB, whole months
    # detached and dropped otherwise; the services may not drop tables themselves.
    dropped = int(await conn.fetchval("SELECT segments_drop_months_before($1)", cutoff))
    await conn.execute("DELETE FROM segments WHERE start_at < $1", cutoff)
    return dropped
