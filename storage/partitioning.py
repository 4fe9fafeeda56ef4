"""Time partitioning of the segments table: TimescaleDB when the extension is there, native
PostgreSQL range partitions managed here otherwise. Same table name, columns and queries;
this module is the only place that knows which one is in use.

- TimescaleDB: ``segments`` becomes a hypertable on ``start_at`` with 7-day chunks;
  retention drops whole chunks (``drop_chunks``).
- Native: ``segments`` becomes a table partitioned by month on ``start_at``; the
  maintenance job creates the months ahead of time and retention detaches and drops whole
  months. A DEFAULT partition catches a row no month was made for, so an insert never fails.

Both keep a primary key of (id, start_at): a partitioned table's unique keys must include
the partition column.
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg

log = logging.getLogger(__name__)

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


def create_month_sql(month: dt.datetime) -> str:
    nxt = add_months(month, 1)
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(month)} PARTITION OF segments "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{nxt.isoformat()}')")


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
    return bool(await conn.fetchval(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"))


async def prepare(conn: asyncpg.Connection, now: dt.datetime | None = None) -> str:
    """Convert ``segments`` once (called after the migrations, under their lock) and make
    sure the months around ``now`` exist. Returns the mode in use."""
    now = now or dt.datetime.now(dt.UTC)
    current = await mode(conn)
    if current == "plain":
        async with conn.transaction():
            if await timescale_available(conn):
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                await conn.execute(
                    "SELECT create_hypertable('segments', 'start_at', chunk_time_interval =>"
                    f" interval '{CHUNK_INTERVAL}', migrate_data => true)")
                current = "timescaledb"
            else:
                await _to_native(conn, now)
                current = "native"
        log.info("segments partitioned: %s", current)
    if current == "native":
        await ensure_months(conn, now)
    return current


async def _to_native(conn: asyncpg.Connection, now: dt.datetime) -> None:
    """Swap the plain table for a partitioned one with the same columns and indexes."""
    await conn.execute("ALTER TABLE segments RENAME TO segments_unpartitioned")
    await conn.execute("ALTER INDEX segments_by_patient_metric_time"
                       " RENAME TO segments_unpartitioned_by_time")
    await conn.execute("""
        CREATE TABLE segments (LIKE segments_unpartitioned INCLUDING DEFAULTS
                               INCLUDING CONSTRAINTS, PRIMARY KEY (id, start_at))
        PARTITION BY RANGE (start_at)""")
    await conn.execute("CREATE INDEX segments_by_patient_metric_time"
                       " ON segments (patient_id, metric, start_at)")
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
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                     partition_name(month))
        if not exists:
            stray = await conn.fetchval(
                "SELECT 1 FROM segments_default WHERE start_at >= $1 AND start_at < $2"
                " LIMIT 1", month, add_months(month, 1))
            if stray:
                log.warning("rows for %s sit in segments_default; month not created",
                            f"{month:%Y-%m}")
            else:
                await conn.execute(create_month_sql(month))
                made.append(partition_name(month))
        month = add_months(month, 1)
    return made


async def drop_before(conn: asyncpg.Connection, cutoff: dt.datetime) -> int:
    """Retention: remove segments that start before ``cutoff``, whole partitions or chunks
    where possible (cheap, no dead rows), row by row only in the part that straddles it.
    Returns the number of whole partitions or chunks dropped."""
    current = await mode(conn)
    dropped = 0
    if current == "timescaledb":
        dropped = len(await conn.fetch(
            "SELECT drop_chunks('segments', older_than => $1::timestamptz)", cutoff))
    elif current == "native":
        rows = await conn.fetch(
            """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent
               WHERE p.relname = 'segments' AND c.relname ~ '^segments_[0-9]{6}$'""")
        for row in rows:
            month = dt.datetime.strptime(row["relname"][-6:], "%Y%m").replace(tzinfo=dt.UTC)
            if add_months(month, 1) <= cutoff:
                await conn.execute(f"ALTER TABLE segments DETACH PARTITION {row['relname']}")
                await conn.execute(f"DROP TABLE {row['relname']}")
                dropped += 1
    await conn.execute("DELETE FROM segments WHERE start_at < $1", cutoff)
    return dropped
