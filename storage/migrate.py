"""Numbered SQL migrations, applied once each, under an advisory lock.

Several bridge and API replicas may start at once: the advisory lock makes one of them apply
the schema while the others wait, and the ``schema_migrations`` table makes a second run a
no-op.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re

import asyncpg

from storage import partitioning
from storage.errors import MigrationError

LOCK_KEY = 0x4845414C  # "HEAL": one advisory lock id for every healthiot migration
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) for every migration shipped with the package, in order."""
    folder = importlib.resources.files("storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    numbers = [n for n, _, _ in found]
    # Numbers are unique but may skip: parallel branches each reserve theirs.
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migrations share a number: {numbers}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied by this call."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                number integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())""")
        done = {r["number"]: r["sha256"] for r in
                await conn.fetch("SELECT number, sha256 FROM schema_migrations")}
        pending = []
        # Every applied file is checked before anything is applied: an edited history is
        # refused as a whole, not after half of the new migrations went in.
        for number, name, sql in migrations():
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if number not in done:
                pending.append((number, name, sql, digest))
            elif done[number] != digest:
                raise MigrationError(
                    f"{name} was applied with sha256 {done[number][:12]}... but the file now "
                    f"has {digest[:12]}...: an applied migration must not change; restore it "
                    "and put the change in a new migration")
        for number, name, sql, digest in pending:
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (number, name, sha256) VALUES ($1,$2,$3)",
                        number, name, digest)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{name} failed: {exc}") from exc
            applied.append(name)
        # Partitioning depends on what the server offers (TimescaleDB or not): decided
        # here, once, under the same lock.
        await partitioning.prepare(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied
