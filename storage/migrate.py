"""Numbered SQL migrations, applied once each, under an advisory lock, as the owner role.

Several bridge and API replicas may start at once: the advisory lock makes one of them apply
the schema while the others wait, and the ``schema_migrations`` table makes a second run a
no-op. The connection is an administrator's (storage/roles.py): the roles are made if
missing, the database is handed to the owner role, and the migrations run as that role.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.resources
import re

import asyncpg

from storage import partitioning, roles
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


async def migrate(conn: asyncpg.Connection, *,
                  audit_retention: dt.timedelta | None = None) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied by this call.

    ``audit_retention``, when given, becomes the audit log's retention period: set here, by
    whoever may migrate, because the services must not be able to shorten it."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    as_owner = False
    try:
        as_owner = await _become_owner(conn)
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
        # The history is the owner's: the services read it (a backup as them is whole).
        await conn.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations"
                           f" FROM {roles.SERVICE}")
        # Partitioning depends on what the server offers (TimescaleDB or not): decided
        # here, once, under the same lock.
        await partitioning.prepare(conn)
        if audit_retention is not None:
            await conn.execute("UPDATE audit_policy SET retention = $1", audit_retention)
    finally:
        if as_owner:
            await conn.execute("RESET ROLE")
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied


async def _become_owner(conn: asyncpg.Connection) -> bool:
    """Switch this session to the owner role (True), after making the roles and handing the
    database over if needed; False when the session is the owner role already."""
    if await conn.fetchval("SELECT current_user") == roles.OWNER:
        return False
    try:
        await roles.ensure_roles(conn)
        if await partitioning.timescale_available(conn):
            # An extension that is not "trusted" needs a superuser: made here, before the
            # switch, so that the owner role can convert segments into a hypertable.
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await roles.hand_to_owner(conn)
        await conn.execute(f"SET ROLE {roles.OWNER}")
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"cannot migrate as {roles.OWNER}: {exc}") from exc
    return True
