"""The audit log: who did what to whose data, when, with what outcome. Never health values.

Append-only and hash-chained: each row's hash is SHA-256 over the previous row's hash and
the row's own content, so editing, inserting or removing a row in the middle breaks the
chain at that row. A trigger refuses UPDATE and DELETE; the retention job may delete from
the oldest end only, and the oldest remaining row's ``prev_hash`` is then the anchor.
Appends are serialised by a transaction-scoped advisory lock: one chain, one writer at a
time (a row per request is a small price).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

import asyncpg

from storage.device_refs import pseudonymise

_CHAIN_LOCK = 0x41554454  # "AUDT"
GENESIS = b"\x00" * 32


def row_hash(prev: bytes, row_id: int, at: dt.datetime, actor: str,
             patient_id: uuid.UUID | None, action: str, resource: str, outcome: str) -> bytes:
    fields = [str(row_id), at.astimezone(dt.UTC).isoformat(), actor, str(patient_id or ""),
              action, resource, outcome]
    # Length-prefixed, so no choice of field contents can forge another row's encoding.
    body = b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
    return hashlib.sha256(prev + body).digest()


@dataclass(frozen=True, slots=True)
class ChainCheck:
    rows: int
    first_broken_id: int | None  # None when the whole chain holds

    @property
    def intact(self) -> bool:
        return self.first_broken_id is None


class Audit:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, *, actor: str, patient_id: uuid.UUID | None, action: str,
                     resource: str, outcome: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            resource = await pseudonymise(conn, resource)  # no device id outlives erasure
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
            prev = await conn.fetchval(
                "SELECT hash FROM audit_log WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1")
            row_id = await conn.fetchval("SELECT nextval('audit_log_id_seq')")
            # Microseconds, as PostgreSQL keeps them: the hash must survive the round trip.
            at = dt.datetime.now(dt.UTC)
            digest = row_hash(prev or GENESIS, row_id, at, actor, patient_id, action,
                              resource, outcome)
            await conn.execute(
                """INSERT INTO audit_log (id, at, actor, patient_id, action, resource, outcome,
                                          prev_hash, hash)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
                row_id, at, actor, patient_id, action, resource, outcome, prev or GENESIS,
                digest)

    async def for_patient(self, patient_id: uuid.UUID, limit: int = 100,
                          before_id: int | None = None) -> list[asyncpg.Record]:
        """The patient's entries, newest first, a page of ``limit`` before ``before_id``."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, at, actor, action, resource, outcome FROM audit_log"
            " WHERE patient_id = $1 AND ($3::bigint IS NULL OR id < $3)"
            " ORDER BY id DESC LIMIT $2", patient_id, limit, before_id)
        return rows

    async def verify_chain(self, batch: int = 10_000) -> ChainCheck:
        """Walk the chain from its oldest row; the first row whose stored hash is not the
        hash of its content and predecessor is where someone edited the log."""
        checked, last_id, expected_prev = 0, 0, None
        async with self._pool.acquire() as conn:
            while True:
                rows = await conn.fetch(
                    """SELECT id, at, actor, patient_id, action, resource, outcome, prev_hash,
                              hash FROM audit_log WHERE hash IS NOT NULL AND id > $1
                       ORDER BY id LIMIT $2""", last_id, batch)
                if not rows:
                    return ChainCheck(checked, None)
                for r in rows:
                    prev = r["prev_hash"] if expected_prev is None else expected_prev
                    digest = row_hash(prev, r["id"], r["at"], r["actor"], r["patient_id"],
                                      r["action"], r["resource"], r["outcome"])
                    if r["prev_hash"] != prev or r["hash"] != digest:
                        return ChainCheck(checked, r["id"])
                    expected_prev, last_id = digest, r["id"]
                    checked += 1

    async def cut_before(self, moment: dt.datetime) -> int:
        """Retention: delete entries older than ``moment``, from the oldest end only."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
            await conn.execute("SET LOCAL healthiot.audit_retention = 'on'")
            status = await conn.execute("DELETE FROM audit_log WHERE at < $1", moment)
        return int(status.split()[-1])
