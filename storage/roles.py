"""The database roles: who owns the schema, and who the services are.

- ``healthiot_owner`` (no login) owns the database's schema, every table and the few
  SECURITY DEFINER functions. Migrations run as it: an administrator (a superuser, or a role
  that is a member of it) connects and ``SET ROLE``\\ s to it.
- ``healthiot_service`` (login) is what the bridge, the API, the record feed and the
  maintenance job connect as: rows only (migration 100 grants them), no DDL, only INSERT and
  SELECT on the audit log, and no setting that turns a protection off (it is no superuser,
  so ``session_replication_role`` and triggers are out of reach). What it needs beyond rows
  (audit retention, partitions) goes through functions the owner wrote for exactly that.

Roles are cluster-wide; grants are per database, in migration 100 and its default
privileges, so a table a later migration creates is granted the same way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import asyncpg

from storage.errors import MigrationError

OWNER = "healthiot_owner"
SERVICE = "healthiot_service"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


async def ensure_roles(conn: asyncpg.Connection) -> None:
    """Create the two roles unless they exist (needs CREATEROLE or a superuser)."""
    for name, options in ((OWNER, "NOLOGIN"), (SERVICE, "LOGIN")):
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
            continue
        try:
            await conn.execute(f"CREATE ROLE {name} {options} NOSUPERUSER NOCREATEDB "
                               "NOCREATEROLE NOREPLICATION NOBYPASSRLS")
        except asyncpg.DuplicateObjectError:
            pass  # another database's migration made it meanwhile: roles are cluster-wide
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MigrationError(
                f"role {name} does not exist and {await conn.fetchval('SELECT current_user')}"
                f" may not create it: create it as an administrator ({exc})") from None


async def hand_to_owner(conn: asyncpg.Connection) -> int:
    """Make the owner role own the current database, its public schema and everything in
    that schema (a database migrated before the roles existed belongs to whoever migrated
    it). Objects of extensions (TimescaleDB's functions live in public) are left alone.
    Returns the number of objects handed over."""
    await conn.execute(f"ALTER SCHEMA public OWNER TO {OWNER}")
    # Only the owner creates in public (PostgreSQL before 15 let everyone).
    await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{database}" OWNER TO {OWNER}')
    # Partitions included (ALTER TABLE does not recurse to them); a serial's sequence
    # follows its table, and cannot be given away by itself.
    relations = await conn.fetch(
        """SELECT c.oid::regclass::text AS name, c.relkind FROM pg_class c
           WHERE c.relnamespace = 'public'::regnamespace
             AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
             AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = $1)
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                             AND d.objid = c.oid AND (d.deptype = 'e'
                                  OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))""",
        OWNER)
    for rel in relations:
        kind = "SEQUENCE" if rel["relkind"] == "S" else "TABLE"
        await conn.execute(f"ALTER {kind} {rel['name']} OWNER TO {OWNER}")
    functions = await conn.fetch(
        """SELECT p.oid::regprocedure::text AS name FROM pg_proc p
           WHERE p.pronamespace = 'public'::regnamespace
             AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = $1)
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                             AND d.objid = p.oid AND d.deptype = 'e')""", OWNER)
    for fn in functions:
        await conn.execute(f"ALTER FUNCTION {fn['name']} OWNER TO {OWNER}")
    return len(relations) + len(functions)


async def set_password(conn: asyncpg.Connection, role: str, password: str) -> None:
    """Give ``role`` this password, sent as a SCRAM verifier: the plain text never reaches
    the server, its logs or pg_stat_statements."""
    if not password:
        raise MigrationError(f"an empty password for {role}")
    if not (password.isascii() and password.isprintable()):
        # Clients SASLprep a password before hashing it; for printable ASCII that changes
        # nothing, so the verifier computed here is the one they will match.
        raise MigrationError(f"the password for {role} must be printable ASCII")
    await conn.execute(f"ALTER ROLE {role} PASSWORD '{scram_verifier(password)}'")


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"
