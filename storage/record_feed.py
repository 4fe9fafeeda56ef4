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


def _measured_at(identifier: str) -> str:
    """The reading's time from its outbox identifier (patient/metric/epoch ms)."""
    ms = int(identifier.rsplit("/", 1)[1])
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            + dt.timedelta(milliseconds=ms)).isoformat(timespec="seconds")


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
    link: str  # none, linked, relink (the patient must link their record again)
    pending: int
    sent: int
    refused: int
    last_refusal: str | None  # the record's answer, readable by the patient


class RecordFeed:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def set_consent(self, patient_id: uuid.UUID, enabled: bool) -> None:
        """Turn the feed on or off. Who the patient is at the record comes from their link
        (storage/record_links.py), not from here."""
        async with self._pool.acquire() as conn:
            version, _key = await self._keyring.current(conn, str(patient_id))
            await conn.execute(
                """INSERT INTO record_feed_consents (patient_id, enabled, key_version)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (patient_id) DO UPDATE SET enabled = $2, ins_sealed = NULL,
                       key_version = $3, updated_at = now()""",
                patient_id, enabled, version)

    async def consenting(self) -> list[uuid.UUID]:
        """Every patient feeding the record."""
        rows = await self._pool.fetch("SELECT patient_id FROM record_feed_consents"
                                      " WHERE enabled ORDER BY patient_id")
        return [r["patient_id"] for r in rows]

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
                          delay: dt.timedelta, *, count: bool = True) -> None:
        """Pending again after ``delay``; ``count=False`` when no attempt was made (the
        entry waits for the patient, and the backoff must not grow meanwhile)."""
        await self._pool.execute(
            """UPDATE record_feed_outbox SET attempts = attempts + $5::int, last_status = $2,
                   last_error = $3, next_attempt_at = now() + $4::interval WHERE id = $1""",
            entry_id, status, reason, delay, int(count))

    async def wake(self, patient_id: uuid.UUID) -> None:
        """Make a patient's pending entries due now (they linked their record again)."""
        await self._pool.execute("UPDATE record_feed_outbox SET next_attempt_at = now()"
                                 " WHERE patient_id = $1 AND state = 'pending'", patient_id)

    async def readings(self, patient_id: uuid.UUID, limit: int = 100
                       ) -> list[dict[str, Any]]:
        """The latest readings queued for the record, each with its state and, when
        refused or waiting, the reason: what the patient sees of the feed."""
        rows = await self._pool.fetch(
            """SELECT identifier, metric, state, last_status, last_error, sent_at, created_at
               FROM record_feed_outbox WHERE patient_id = $1 ORDER BY id DESC LIMIT $2""",
            patient_id, limit)
        return [{"metric": r["metric"],
                 "measured_at": _measured_at(r["identifier"]),
                 "state": r["state"],
                 "reason": r["last_error"] if r["state"] != "sent" else None,
                 "sent_at": r["sent_at"].isoformat() if r["sent_at"] else None}
                for r in rows]

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
            link = await conn.fetchval("SELECT state FROM record_links WHERE patient_id = $1",
                                       patient_id)
        return FeedStatus(bool(enabled), link or "none", counts.get("pending", 0),
                          counts.get("sent", 0), counts.get("refused", 0), refusal)
