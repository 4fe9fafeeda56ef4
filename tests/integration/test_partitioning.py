"""The schema that partitioning.py converts, checked on the real PostgreSQL of the pass:
native range partitions on plain PostgreSQL, a hypertable on TimescaleDB.

create_hypertable refuses a table with a unique key that lacks the time column, and
TimescaleDB before 2.16 refuses a hypertable as a foreign key target; native range
partitioning enforces the first rule too. Both conversions must keep every column, key and
index as they are, names included, and add none, so that both engines end with the same.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage import partitioning
from storage.migrate import migrate, migrations
from tests.conftest import Database


@pytest.fixture
async def plain(pg_server: Database) -> AsyncIterator[asyncpg.Connection]:
    """An empty database with every migration applied and nothing converted yet: the
    schema create_hypertable or the native conversion starts from."""
    name = f"plain_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg_server.dsn.rsplit("/", 1)[0] + "/" + name,
                                 password=pg_server.password)
    try:
        for _, _, sql in migrations():
            await conn.execute(sql)
        yield conn
    finally:
        await conn.close()
        admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def _unique_keys(conn: asyncpg.Connection, table: str) -> dict[str, list[str]]:
    rows = await conn.fetch(
        """SELECT c.relname, array_agg(a.attname ORDER BY k.ord) AS columns
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = $1::regclass AND i.indisunique GROUP BY c.relname""", table)
    return {r["relname"]: list(r["columns"]) for r in rows}


async def _indexes(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Name -> definition; a partitioned table's say "ON ONLY", which is the same index."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) AS d FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass", table)
    return {r["relname"]: re.sub(r" ON ONLY ", " ON ", r["d"]) for r in rows}


async def _constraints(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch("SELECT conname, pg_get_constraintdef(oid) AS d FROM pg_constraint"
                            " WHERE conrelid = $1::regclass", table)
    return {r["conname"]: r["d"] for r in rows}


async def _columns(conn: asyncpg.Connection, table: str) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        """SELECT column_name, data_type, is_nullable, column_default
           FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position""",
        table)
    return [tuple(r) for r in rows]


async def test_every_unique_key_of_the_time_partitioned_table_holds_its_time_column(
        plain: asyncpg.Connection) -> None:
    keys = await _unique_keys(plain, partitioning.TABLE)
    assert keys, "the table has no primary key"
    lacking = {name: cols for name, cols in keys.items() if partitioning.TIME_COLUMN not in cols}
    assert not lacking, (f"create_hypertable and native partitioning refuse these keys of "
                         f"{partitioning.TABLE}, which lack {partitioning.TIME_COLUMN}: {lacking}")


async def test_no_foreign_key_points_at_the_time_partitioned_table(
        plain: asyncpg.Connection) -> None:
    referencing = await plain.fetch(
        "SELECT conrelid::regclass::text AS t, conname FROM pg_constraint"
        " WHERE contype = 'f' AND confrelid = $1::regclass", partitioning.TABLE)
    assert [tuple(r) for r in referencing] == []


async def test_conversion_keeps_columns_keys_indexes_and_rows_and_adds_none(
        plain: asyncpg.Connection, db_engine: str) -> None:
    table = partitioning.TABLE
    before = (await _columns(plain, table), await _constraints(plain, table),
              await _indexes(plain, table))
    assert "segments_pending_rollup" in before[2]  # the one the first conversion lost
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(days=400)  # older than any month made ahead: its own partition
    rows = [(uuid.uuid4(), uuid.uuid4(), "heart_rate", "w", t, t, 1, 1, b"\x01")
            for t in (old, now)]
    await plain.copy_records_to_table(
        table, records=rows, columns=["id", "patient_id", "metric", "device_id", "start_at",
                                      "end_at", "samples", "key_version", "sealed"])
    assert await partitioning.prepare(plain, now) == db_engine
    after = (await _columns(plain, table), await _constraints(plain, table),
             await _indexes(plain, table))
    assert after == before  # TimescaleDB's default segments_start_at_idx included: none
    stored = await plain.fetch("SELECT id, rolled_up FROM segments")
    assert sorted(tuple(r) for r in stored) == sorted((r[0], False) for r in rows)
    # Each partition or chunk carries every index too, the partial one included.
    part = await plain.fetchval("SELECT tableoid::regclass::text FROM segments"
                                " WHERE start_at < $1", now - dt.timedelta(days=300))
    if db_engine == "native":
        assert part == partitioning.partition_name(partitioning.month_start(old))
    assert len(await _indexes(plain, part)) == len(before[2])
    assert await plain.fetchval("SELECT count(*) FROM pg_class"
                                " WHERE relname LIKE 'segments_unpartitioned%'") == 0


async def test_a_database_converted_before_the_key_fix_is_repaired_by_migrating(
        database: Database, db_engine: str) -> None:
    """Databases converted by the first native conversion lack segments_pending_rollup;
    020 must leave their (already right) key alone and 021 make the index."""
    conn = await asyncpg.connect(database.admin_dsn, password=database.admin_password)
    try:
        await conn.execute("DROP INDEX segments_pending_rollup")
        await conn.execute("DELETE FROM schema_migrations WHERE number IN (20, 21)")
        keys_before = await _unique_keys(conn, partitioning.TABLE)
        applied = await migrate(conn)
        assert [a[:3] for a in applied] == ["020", "021"]
        assert await _unique_keys(conn, partitioning.TABLE) == keys_before
        assert "segments_pending_rollup" in await _indexes(conn, partitioning.TABLE)
        assert await partitioning.mode(conn) == db_engine
    finally:
        await conn.close()
