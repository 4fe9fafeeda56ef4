"""The medical-record feed's durable state: the patient's consent and the outbox.

A reading enters the outbox once (its identifier is unique) and leaves the pending state only
on a definitive answer: sent (2xx) or refused (403 consent, 422 invalid). A sender claims
due entries with a lease, so two senders never post the same entry at once and a sender that
dies mid-post gives its entries back when the lease ends.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from storage.crypto import open_sealed, seal
from storage.device_info import DeviceInfo, device_info
from storage.keyring import Keyring

LEASE = dt.timedelta(seconds=60)


def _aad(kind: str, patient_id: uuid.UUID, identifier: str, version: int) -> bytes:
    return f"healthiot-record-feed|{kind}|{patient_id}|{identifier}|{version}".encode()


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    patient_id: uuid.UUID
    identifier: str
    attempts: int
    bundle: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FeedStatus:
    enabled: bool
    pending: int
    sent: int
    refused: int
    last_refusal: str | None  # the record's answer, readable by the patient


class RecordFeed:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def set_consent(self, patient_id: uuid.UUID, enabled: bool, ins: str) -> None:
        async with self._pool.acquire() as conn:
            version, key = await self._keyring.current(conn, str(patient_id))
            sealed = seal(key, ins.encode(), _aad("ins", patient_id, "", version))
            await conn.execute(
                """INSERT INTO record_feed_consents (patient_id, enabled, ins_sealed,
                                                     key_version)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (patient_id) DO UPDATE SET enabled = $2, ins_sealed = $3,
                       key_version = $4, updated_at = now()""",
                patient_id, enabled, sealed, version)

    async def consenting(self) -> list[tuple[uuid.UUID, str]]:
        """(patient id, national health identifier) of every patient feeding the record."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT patient_id, ins_sealed, key_version"
                                    " FROM record_feed_consents WHERE enabled")
            out = []
            for row in rows:
                key = await self._keyring.get(conn, str(row["patient_id"]), row["key_version"])
                ins = open_sealed(key, row["ins_sealed"],
                                  _aad("ins", row["patient_id"], "", row["key_version"]))
                out.append((row["patient_id"], ins.decode()))
            return out

    async def devices(self, device_ids: Sequence[str]) -> dict[str, DeviceInfo]:
        """The registered devices among ``device_ids`` (an unknown source is left out)."""
        return await device_info(self._pool, device_ids)

    async def enqueue(self, patient_id: uuid.UUID,
                      entries: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        """Add (identifier, metric, bundle) entries not yet in the outbox; returns how many
        were new. Re-enqueueing what was already fed is a no-op."""
        if not entries:
            return 0
        async with self._pool.acquire() as conn:
            version, key = await self._keyring.current(conn, str(patient_id))
            rows = [(patient_id, ident, metric, version,
                     seal(key, json.dumps(bundle).encode(),
                          _aad("bundle", patient_id, ident, version)))
                    for ident, metric, bundle in entries]
            result = await conn.fetch(
                """INSERT INTO record_feed_outbox (patient_id, identifier, metric, key_version,
                                                   sealed)
                   SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[],
                                        $5::bytea[])
                   ON CONFLICT (identifier) DO NOTHING RETURNING id""",
                *[list(col) for col in zip(*rows, strict=True)])
            return len(result)

    async def claim_due(self, limit: int) -> list[Entry]:
        """Pending entries whose time has come, leased to this caller."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE record_feed_outbox SET next_attempt_at = now() + $2::interval
                   WHERE id IN (SELECT id FROM record_feed_outbox
                                WHERE state = 'pending' AND next_attempt_at <= now()
                                ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING id, patient_id, identifier, attempts, key_version, sealed""",
                limit, LEASE)
            out = []
            for row in rows:
                key = await self._keyring.get(conn, str(row["patient_id"]), row["key_version"])
                plain = open_sealed(key, row["sealed"], _aad(
                    "bundle", row["patient_id"], row["identifier"], row["key_version"]))
                out.append(Entry(row["id"], row["patient_id"], row["identifier"],
                                 row["attempts"], json.loads(plain)))
            return sorted(out, key=lambda e: e.id)

    async def still_consented(self, patient_id: uuid.UUID) -> bool:
        enabled = await self._pool.fetchval(
            "SELECT enabled FROM record_feed_consents WHERE patient_id = $1", patient_id)
        return bool(enabled)

    async def mark_sent(self, entry_id: int, status: int) -> None:
        await self._pool.execute(
            """UPDATE record_feed_outbox SET state = 'sent', sent_at = now(), last_status = $2,
                   attempts = attempts + 1, last_error = NULL WHERE id = $1""",
            entry_id, status)

    async def mark_refused(self, entry_id: int, status: int | None, reason: str) -> None:
        await self._pool.execute(
            """UPDATE record_feed_outbox SET state = 'refused', last_status = $2,
                   last_error = $3, attempts = attempts + 1 WHERE id = $1""",
            entry_id, status, reason)

    async def retry_later(self, entry_id: int, status: int | None, reason: str,
                          delay: dt.timedelta) -> None:
        await self._pool.execute(
            """UPDATE record_feed_outbox SET attempts = attempts + 1, last_status = $2,
                   last_error = $3, next_attempt_at = now() + $4::interval WHERE id = $1""",
            entry_id, status, reason, delay)

    async def status(self, patient_id: uuid.UUID) -> FeedStatus:
        async with self._pool.acquire() as conn:
            enabled = await conn.fetchval(
                "SELECT enabled FROM record_feed_consents WHERE patient_id = $1", patient_id)
            counts = {r["state"]: r["n"] for r in await conn.fetch(
                "SELECT state, count(*) AS n FROM record_feed_outbox WHERE patient_id = $1"
                " GROUP BY state", patient_id)}
            refusal = await conn.fetchval(
                "SELECT last_error FROM record_feed_outbox WHERE patient_id = $1"
                " AND state = 'refused' ORDER BY id DESC LIMIT 1", patient_id)
        return FeedStatus(bool(enabled), counts.get("pending", 0), counts.get("sent", 0),
                          counts.get("refused", 0), refusal)
