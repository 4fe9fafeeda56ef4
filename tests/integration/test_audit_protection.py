"""The audit log against someone who reaches the database (issue 18).

Two attackers: the services' own role (a stolen service password, an SQL injection), which
must not be able to change the log or the schema at all; and the database's owner or a
superuser, who can change anything in the database, but not the key the chain is computed
with nor the anchors written outside it, so `healthiot audit verify` sees what they did.
Both act through psql, a real client, besides asyncpg.
"""
# The attacker's SQL is built from ids and hex digests the test itself read.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from healthiot.localservers import find_binary
from healthiot.services import Core, open_core
from storage import partitioning, roles
from storage.audit import GENESIS, row_mac
from storage.errors import MigrationError
from storage.migrate import migrate, migrations
from tests.conftest import Database

ROOT = Path(__file__).resolve().parents[2]


def psql(dsn: str, password: str, sql: str) -> subprocess.CompletedProcess[str]:
    """One psql session running ``sql``, stopping at the first error."""
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run([find_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                           "-d", dsn, "-c", sql], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def _core(database: Database, tmp_path: Path, anchor_every_s: float) -> Core:
    return await open_core(database.dsn, database.password, tmp_path / "kek.bin",
                           create_kek=True, anchor_every_s=anchor_every_s)


@pytest.fixture
async def core(database: Database, tmp_path: Path) -> AsyncIterator[Core]:
    """The conftest's core, but a burst of appends is anchored at its first row and, on
    flush, its last only: the tests below name the anchored rows, and five appends can take
    longer than ANCHOR_EVERY_S on a loaded machine (the timer is tested apart)."""
    opened = await _core(database, tmp_path, anchor_every_s=3600)
    try:
        yield opened
    finally:
        await opened.close()


async def _entries(core: Core, n: int) -> list[int]:
    patient = uuid.uuid4()
    for i in range(n):
        await core.audit.record(actor=f"patient:{patient}", patient_id=patient, action="read",
                                resource=f"vitals/heart_rate/{i}", outcome="ok")
    # The attacker comes later than ANCHOR_EVERY_S (tested apart): the head is anchored.
    core.audit.flush()
    return [r["id"] for r in await core.pool.fetch("SELECT id FROM audit_log ORDER BY id")]


async def _as_attacker(database: Database, sql: str) -> None:
    """``sql`` run by the owner of everything (a superuser), triggers off."""
    done = await asyncio.to_thread(
        psql, database.admin_dsn, database.admin_password,
        f"SET session_replication_role = replica; {sql}")
    assert done.returncode == 0, done.stderr


def _sha256_chain(prev: bytes, row: asyncpg.Record) -> bytes:
    """The chain as it was before the key: what an attacker can recompute."""
    at = row["at"].astimezone(dt.UTC).isoformat()
    fields = [str(row["id"]), at, row["actor"], str(row["patient_id"] or ""), row["action"],
              row["resource"], row["outcome"]]
    body = b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
    return hashlib.sha256(prev + body).digest()


# --- the service role ------------------------------------------------------------------

async def test_the_services_connect_as_a_role_with_no_special_power(core: Core) -> None:
    row = await core.pool.fetchrow(
        "SELECT current_user AS name, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls,"
        " rolreplication FROM pg_roles WHERE rolname = current_user")
    assert row["name"] == roles.SERVICE
    assert not any(row[k] for k in ("rolsuper", "rolcreaterole", "rolcreatedb",
                                    "rolbypassrls", "rolreplication"))
    owners = {r["tableowner"] for r in await core.pool.fetch(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {roles.OWNER}


TAMPERING = [
    "UPDATE audit_log SET outcome = 'refused'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "SET healthiot.audit_retention = 'on'; DELETE FROM audit_log",
    "BEGIN; SET LOCAL healthiot.audit_retention = 'on'; DELETE FROM audit_log; COMMIT",
    "SET session_replication_role = replica; DELETE FROM audit_log",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN RETURN OLD; END $$",
    "ALTER TABLE audit_log ALTER COLUMN hash DROP NOT NULL",
    "DROP TABLE audit_log",
    "CREATE TABLE stolen (x int)",
    "CREATE SCHEMA elsewhere",
    "CREATE FUNCTION now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$",
    "ALTER TABLE patients ADD COLUMN note text",
    "CREATE INDEX ON segments (id)",
    "ALTER TABLE audit_log OWNER TO healthiot_service",
    "GRANT DELETE ON audit_log TO healthiot_service; DELETE FROM audit_log",
    "INSERT INTO schema_migrations (number, name, sha256) VALUES (999, 'x', 'x')",
    "UPDATE audit_policy SET retention = interval '0'",
    "SELECT audit_log_cut(now() + interval '1 day')",  # allowed, but removes nothing: below
]


@pytest.mark.parametrize("sql", TAMPERING)
async def test_the_service_role_cannot_tamper_with_the_log_or_the_schema(
        core: Core, database: Database, sql: str) -> None:
    ids = await _entries(core, 3)
    segments_before = await _segments_layout(core)
    schema_before = await core.pool.fetchval(
        "SELECT md5(string_agg(table_name || column_name, ',' ORDER BY 1))"
        " FROM information_schema.columns WHERE table_schema = 'public'")

    done = await asyncio.to_thread(psql, database.dsn, database.password, sql)
    if sql.startswith("SELECT"):
        assert done.returncode == 0, done.stderr  # the narrow paths are open, and narrow
    else:
        assert done.returncode != 0, f"{sql!r} was allowed"
        assert "ERROR" in done.stderr

    assert [r["id"] for r in await core.pool.fetch("SELECT id FROM audit_log ORDER BY id")] \
        == ids
    assert (await core.audit.verify_chain()).intact
    assert await core.pool.fetchval(
        "SELECT md5(string_agg(table_name || column_name, ',' ORDER BY 1))"
        " FROM information_schema.columns WHERE table_schema = 'public'") == schema_before
    assert await _segments_layout(core) == segments_before


async def _segments_layout(core: Core) -> tuple[int, list[str]]:
    """The rows of segments and the tables holding them: monthly partitions on native
    PostgreSQL, chunks on TimescaleDB (both inherit from segments)."""
    async with core.pool.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM segments")
        children = await conn.fetch(
            "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
            " WHERE inhparent = 'segments'::regclass ORDER BY 1")
        assert children or await partitioning.mode(conn) == "timescaledb"
    return rows, [r["name"] for r in children]


async def test_asyncpg_as_the_service_role_is_refused_too(core: Core) -> None:
    await _entries(core, 2)
    for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                "TRUNCATE audit_log", "CREATE TABLE t (x int)"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await core.pool.execute(sql)
    async with core.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SET LOCAL healthiot.audit_retention = 'on'")
                await conn.execute("DELETE FROM audit_log")


async def test_retention_of_the_audit_log_removes_only_rows_past_the_period(
        core: Core, database: Database) -> None:
    ids = await _entries(core, 4)
    # The services ask for everything; the database keeps what is not yet due.
    assert await core.audit.cut_before(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == 0
    assert await core.pool.fetchval("SELECT count(*) FROM audit_log") == 4
    # Rows backdated past the period (as time would make them) are cut, oldest first.
    await _as_attacker(database, "UPDATE audit_log SET at = at - interval '1826 days'"
                                 f" WHERE id IN ({ids[0]}, {ids[1]})")
    removed = await core.audit.cut_before(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert removed == 2
    assert [r["id"] for r in await core.pool.fetch("SELECT id FROM audit_log ORDER BY id")] \
        == ids[2:]
    assert (await core.audit.verify_chain()).intact  # cut from the oldest end: still a chain


# --- the chain, against the owner or a superuser ----------------------------------------

async def test_a_row_cannot_be_stored_without_a_hash(core: Core, database: Database) -> None:
    await _entries(core, 1)
    done = await asyncio.to_thread(
        psql, database.admin_dsn, database.admin_password,
        "INSERT INTO audit_log (actor, action, resource, outcome)"
        " VALUES ('x', 'read', 'vitals', 'ok')")
    assert done.returncode != 0 and "null value" in done.stderr


async def test_rewriting_a_row_and_rechaining_is_detected(core: Core,
                                                          database: Database) -> None:
    ids = await _entries(core, 5)
    target = ids[2]
    rows = await core.pool.fetch("SELECT * FROM audit_log ORDER BY id")
    # The attacker edits a row and recomputes every following hash as the code once did.
    prev = rows[0]["prev_hash"]
    statements = []
    for row in rows:
        edited = dict(row)
        if row["id"] == target:
            edited["actor"] = "patient:someone-else"
        digest = _sha256_chain(prev, edited)  # type: ignore[arg-type]
        statements.append(
            f"UPDATE audit_log SET actor = '{edited['actor']}', prev_hash = '\\x{prev.hex()}',"
            f" hash = '\\x{digest.hex()}' WHERE id = {row['id']};")
        prev = digest
    await _as_attacker(database, " ".join(statements))

    check = await core.audit.verify_chain()
    assert not check.intact
    assert check.first_broken_id == ids[0]  # the key was not used for any of them


async def test_rechaining_with_a_stolen_key_is_caught_by_the_anchor(
        core: Core, database: Database, tmp_path: Path) -> None:
    ids = await _entries(core, 5)
    key = (tmp_path / "audit.key").read_bytes()  # the conftest core's key
    rows = await core.pool.fetch("SELECT * FROM audit_log ORDER BY id")
    prev = rows[0]["prev_hash"]
    statements = []
    for row in rows:
        actor = "patient:someone-else" if row["id"] == ids[1] else row["actor"]
        digest = row_mac(key, prev, row["id"], row["at"], actor, row["patient_id"],
                         row["action"], row["resource"], row["outcome"])
        statements.append(f"UPDATE audit_log SET actor = '{actor}', prev_hash ="
                          f" '\\x{prev.hex()}', hash = '\\x{digest.hex()}'"
                          f" WHERE id = {row['id']};")
        prev = digest
    await _as_attacker(database, " ".join(statements))

    check = await core.audit.verify_chain()
    assert not check.intact
    # Anchored: the first row and the head (a burst). The head's hash covers the rewritten row.
    assert check.first_broken_id == ids[4]
    assert "rewritten" in (check.reason or "")


async def test_deleting_the_newest_rows_is_detected(core: Core, database: Database) -> None:
    ids = await _entries(core, 5)
    await _as_attacker(database, f"DELETE FROM audit_log WHERE id >= {ids[3]}")
    check = await core.audit.verify_chain()
    assert not check.intact
    assert check.first_broken_id == ids[4]  # the head, anchored, is gone
    assert "gone" in (check.reason or "")


async def test_inserting_a_row_is_detected(core: Core, database: Database) -> None:
    ids = await _entries(core, 3)
    last = await core.pool.fetchrow("SELECT * FROM audit_log ORDER BY id DESC LIMIT 1")
    at = dt.datetime.now(dt.UTC)
    forged = {"id": ids[-1] + 1, "at": at, "actor": "operator:cli", "patient_id": None,
              "action": "device", "resource": "devices/x", "outcome": "ok"}
    digest = _sha256_chain(last["hash"], forged)  # type: ignore[arg-type]
    await _as_attacker(database,
                       "INSERT INTO audit_log (id, at, actor, action, resource, outcome,"
                       f" prev_hash, hash) VALUES ({forged['id']}, '{at.isoformat()}',"
                       " 'operator:cli', 'device', 'devices/x', 'ok',"
                       f" '\\x{last['hash'].hex()}', '\\x{digest.hex()}')")
    check = await core.audit.verify_chain()
    assert check.first_broken_id == forged["id"]


async def test_deleting_a_row_in_the_middle_is_detected(core: Core,
                                                        database: Database) -> None:
    ids = await _entries(core, 4)
    await _as_attacker(database, f"DELETE FROM audit_log WHERE id = {ids[1]}")
    assert (await core.audit.verify_chain()).first_broken_id == ids[2]


async def test_healthiot_audit_verify_exits_1_when_the_newest_rows_are_gone(
        core: Core, database: Database, tmp_path: Path) -> None:
    ids = await _entries(core, 3)

    async def verify() -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHIOT_")}
        env.update({"HEALTHIOT_DATABASE_URL": database.dsn,
                    "HEALTHIOT_DATABASE_PASSWORD": database.password,
                    "HEALTHIOT_VAR_DIR": str(tmp_path / "var"),
                    "HEALTHIOT_KEK_FILE": str(tmp_path / "kek.bin"),
                    "HEALTHIOT_OWNER_KEYS_DIR": str(tmp_path / "owner-keys"),
                    "HEALTHIOT_AUDIT_KEY_FILE": str(tmp_path / "audit.key"),
                    "HEALTHIOT_AUDIT_ANCHOR_DIR": str(tmp_path / "audit-anchors")})
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "healthiot.cli", "audit", "verify"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)

    done = await verify()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact" in done.stdout
    await _as_attacker(database, f"DELETE FROM audit_log WHERE id = {ids[-1]}")
    done = await verify()
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"BROKEN at entry {ids[-1]}" in done.stdout


async def test_the_head_is_anchored_at_most_anchor_every_s_after_an_append(
        database: Database, tmp_path: Path) -> None:
    # 3 s, not ANCHOR_EVERY_S: three appends on a loaded machine stay well within it.
    every = 3.0
    core = await _core(database, tmp_path, anchor_every_s=every)
    patient = uuid.uuid4()
    for i in range(3):
        await core.audit.record(actor=f"patient:{patient}", patient_id=patient, action="read",
                                resource=f"r/{i}", outcome="ok")
    last = await core.pool.fetchval("SELECT max(id) FROM audit_log")

    def anchored() -> set[int]:
        return {int(line.split()[0]) for f in (tmp_path / "audit-anchors").glob("*.anchors")
                for line in f.read_text().splitlines()}

    try:
        assert last not in anchored()  # a burst: the first is anchored at once, the rest soon
        await asyncio.sleep(every + 0.3)
        assert last in anchored()
    finally:
        await core.close()


async def test_cutting_the_oldest_rows_before_their_retention_is_detected(
        core: Core, database: Database) -> None:
    ids = await _entries(core, 3)
    await _as_attacker(database, f"DELETE FROM audit_log WHERE id = {ids[0]}")
    # Without the period, a cut from the oldest end looks like retention...
    assert (await core.audit.verify_chain()).intact
    # ...with it (`healthiot audit verify` passes the settings'), the anchor is too recent.
    check = await core.audit.verify_chain(retention=dt.timedelta(days=1825))
    assert check.first_broken_id == ids[0]
    assert "before their time" in (check.reason or "")


async def test_the_first_row_starts_from_genesis(core: Core) -> None:
    await _entries(core, 1)
    assert await core.pool.fetchval("SELECT prev_hash FROM audit_log") == GENESIS


# --- a database from before the roles and the key ---------------------------------------

@pytest.fixture
async def legacy(pg_server: Database, tmp_path: Path) -> AsyncIterator[Database]:
    """A database migrated up to 090 by a superuser, as every one was before issue 18: its
    objects are the superuser's, and its audit log holds a row from before the chain (no
    hash) and three chained with plain SHA-256."""
    name = f"legacy_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    admin_dsn = pg_server.dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(admin_dsn, password=pg_server.password)
    try:
        await conn.execute("""CREATE TABLE schema_migrations (
            number integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())""")
        for number, file_name, sql in migrations():
            if number >= 100:
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", number,
                               file_name, hashlib.sha256(sql.encode()).hexdigest())
        # segments partitioned by month, as the code then did, as the superuser.
        body = next(sql for n, _, sql in migrations() if n == 100)
        start = body.index("CREATE FUNCTION segments_create_month")
        await conn.execute(body[start:body.index("END $$;", start) + len("END $$;")])
        await partitioning.prepare(conn)
        await conn.execute("DROP FUNCTION segments_create_month")
        await conn.execute("INSERT INTO audit_log (at, actor, action, resource, outcome)"
                           " VALUES (now(), 'patient:old', 'read', 'vitals', 'ok')")
        prev = GENESIS
        for i in range(3):
            row_id = await conn.fetchval("SELECT nextval('audit_log_id_seq')")
            at = dt.datetime.now(dt.UTC)
            row = {"id": row_id, "at": at, "actor": "patient:p", "patient_id": None,
                   "action": "read", "resource": f"r/{i}", "outcome": "ok"}
            digest = _sha256_chain(prev, row)  # type: ignore[arg-type]
            await conn.execute(
                "INSERT INTO audit_log (id, at, actor, action, resource, outcome, prev_hash,"
                " hash) VALUES ($1, $2, 'patient:p', 'read', $3, 'ok', $4, $5)",
                row_id, at, f"r/{i}", prev, digest)
            prev = digest
    finally:
        await conn.close()
    yield Database(admin_dsn.replace("//healthiot@", f"//{roles.SERVICE}@"),
                   pg_server.service_password, admin_dsn, pg_server.password)
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


async def test_a_database_from_before_the_roles_is_handed_to_the_owner_and_its_chain_kept(
        legacy: Database, tmp_path: Path) -> None:
    conn = await asyncpg.connect(legacy.admin_dsn, password=legacy.admin_password)
    try:
        applied = await migrate(conn)
        owners = {r["tableowner"] for r in await conn.fetch(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        functions = {r["owner"] for r in await conn.fetch(
            "SELECT proowner::regrole::text AS owner FROM pg_proc p"
            " WHERE pronamespace = 'public'::regnamespace AND NOT EXISTS ("
            "  SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')")}
        unchained = await conn.fetch("SELECT actor FROM audit_log_unchained")
        partitions = await conn.fetch("SELECT 1 FROM pg_tables WHERE tablename ~ '^segments_[0-9]'")
        engine = await partitioning.mode(conn)
    finally:
        await conn.close()
    assert [a[:3] for a in applied][:2] == ["100", "101"]  # then any later ones
    assert owners == functions == {roles.OWNER}  # monthly partitions included
    assert len(partitions) > 3 if engine == "native" else engine == "timescaledb"
    assert [r["actor"] for r in unchained] == ["patient:old"]  # kept, out of the chain

    core = await open_core(legacy.dsn, legacy.password, tmp_path / "kek.bin", create_kek=True)
    try:
        assert await core.pool.fetchval("SELECT current_user") == roles.SERVICE
        check = await core.audit.verify_chain()
        assert check.intact and check.rows == 3  # the SHA-256 rows, checked as such
        await core.audit.record(actor="patient:p", patient_id=None, action="read",
                                resource="r/keyed", outcome="ok")
        core.audit.flush()
        assert (await core.audit.verify_chain()).intact
        # Rewriting the old rows and re-chaining them the old way no longer holds: the
        # first keyed row's MAC covers the last old hash.
        rows = await core.pool.fetch("SELECT * FROM audit_log ORDER BY id")
        prev, statements = GENESIS, []
        for row in rows[:3]:
            edited = {**dict(row), "actor": "patient:q"}
            digest = _sha256_chain(prev, edited)  # type: ignore[arg-type]
            statements.append(f"UPDATE audit_log SET actor = 'patient:q', prev_hash ="
                              f" '\\x{prev.hex()}', hash = '\\x{digest.hex()}'"
                              f" WHERE id = {row['id']};")
            prev = digest
        await _as_attacker(legacy, " ".join(statements))
        check = await core.audit.verify_chain()
        assert check.first_broken_id == rows[3]["id"]
    finally:
        await core.close()


async def test_the_service_role_cannot_run_the_migrations(database: Database) -> None:
    conn = await asyncpg.connect(database.dsn, password=database.password)
    try:
        with pytest.raises(MigrationError):
            await migrate(conn)
    finally:
        await conn.close()


async def test_a_line_in_the_anchor_files_that_is_no_anchor_fails_the_check(
        core: Core, tmp_path: Path) -> None:
    await _entries(core, 2)
    anchor_file = next((tmp_path / "audit-anchors").glob("*.anchors"))
    with anchor_file.open("a") as f:
        f.write("not an anchor\n")
    check = await core.audit.verify_chain()
    assert not check.intact and "no anchor" in (check.reason or "")


async def test_anchor_files_older_than_the_oldest_row_are_pruned_at_retention(
        core: Core, tmp_path: Path) -> None:
    await _entries(core, 2)
    anchors = tmp_path / "audit-anchors"
    old = anchors / "2001-01-01.anchors"
    old.write_text("1 " + "00" * 32 + "\n")
    assert not (await core.audit.verify_chain()).intact  # an anchor no row matches
    await core.audit.cut_before(dt.datetime.now(dt.UTC))  # nothing due: rows stay
    assert not old.exists()
    assert (await core.audit.verify_chain()).intact
