"""The migration runner on a real PostgreSQL: once each, under a lock, on an honest history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage import partitioning
from storage.errors import MigrationError
from storage.migrate import LOCK_KEY, migrate, migrations
from tests.conftest import Database


@pytest.fixture
async def empty(pg_server: Database) -> AsyncIterator[Database]:
    """A database with nothing in it, dropped afterwards."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield Database(pg_server.dsn.rsplit("/", 1)[0] + "/" + name, pg_server.password)
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def _connect(db: Database) -> asyncpg.Connection:
    """As an administrator: migrations run as the owner role through one."""
    return await asyncpg.connect(db.admin_dsn or db.dsn,
                                 password=db.admin_password or db.password)


async def test_migrating_twice_applies_nothing_the_second_time(database: Database) -> None:
    conn = await _connect(database)
    try:
        assert await migrate(conn) == []  # the template was migrated already
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(migrations())
    finally:
        await conn.close()


async def test_two_replicas_migrating_at_once_apply_each_migration_once(
        empty: Database, db_engine: str) -> None:
    holder, first, second = [await _connect(empty) for _ in range(3)]
    try:
        # Both runs start while the lock is taken, so they really contend for it.
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        runs = [asyncio.create_task(migrate(c), name=f"migrate-{i}")
                for i, c in enumerate((first, second))]

        async def waiting() -> int:
            return int(await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database"
                "                 WHERE datname = current_database())"))

        for _ in range(1000):  # up to 10 s (a run without the lock never waits)
            if await waiting() >= 2:
                break
            await asyncio.sleep(0.01)
        contended = await waiting()
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        a, b = await asyncio.wait_for(asyncio.gather(*runs), 60)
        everything = [name for _, name, _ in migrations()]
        assert sorted(a + b) == everything  # each applied by exactly one of them
        assert [] in (a, b)  # the one that waited found everything done
        assert contended == 2
        assert await holder.fetchval("SELECT count(*) FROM schema_migrations") == len(everything)
        assert await partitioning.mode(holder) == db_engine  # converted once, by one
    finally:
        for c in (holder, first, second):
            await c.close()


async def test_an_applied_migration_whose_file_changed_is_refused(database: Database) -> None:
    conn = await _connect(database)
    try:
        # The same as editing 021's file after it ran: its checksum no longer matches. And
        # 020 is pending (a harmless one to run again), to see whether it goes in first.
        await conn.execute("UPDATE schema_migrations SET sha256 = repeat('0', 64)"
                           " WHERE number = 21")
        await conn.execute("DELETE FROM schema_migrations WHERE number = 20")
        with pytest.raises(MigrationError, match=r"^021_\w+\.sql was applied with sha256 "
                                                 r"000000000000.*must not change"):
            await migrate(conn)
        # Nothing was applied on top of the edited history, and the lock was let go.
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations"
                                   " WHERE number = 20") == 0
        other = await _connect(database)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
        finally:
            await other.close()
    finally:
        await conn.close()
