"""Quarantined payloads: what could not be stored as health data, sealed, with its reason.
The operator's listing shows when, which device and why; never the payload.

Written in the ingestion transaction (``Store.ingest``); read only for diagnosis. Each
payload is sealed under the key of whom it is about, so that erasure reaches it in every
copy, backups included:

- the patient's own key when the device is paired to one person: their erasure destroys it;
- else the device's quarantine key ``quarantine:device:<id>`` (a device not paired yet, a
  shared scale whose weighings may be any user's): destroyed when the device leaves
  service (unpaired, revoked, retired) and when anyone who used it is erased;
- ``system:quarantine`` only when no registered device is named (a bad topic, an id the
  registry does not know): nothing ties such a payload to a person;
- nothing at all for a device out of service: the refusal is recorded, the payload is not
  kept (a revoked device's data is not stored, in quarantine or anywhere).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.errors import KeyUnavailable
from storage.keyring import Keyring, system_owner

QUARANTINE_KEY = "quarantine"
MAX_LISTED = 10_000  # a listing is for reading, not for exporting the table
_OUT_OF_SERVICE = ("revoked", "retired")  # as devices/lifecycle.py (storage imports no devices)


@dataclass(slots=True)  # not frozen: see storage.store.MessageIn
class QuarantineIn:
    """Something that could not be stored as health data, kept sealed with the reason."""

    device_id: str | None
    topic: str
    received_at: dt.datetime
    reason: str
    detail: str
    payload: bytes
    # The message whose refused samples these are: written only with that message, so a
    # redelivery (an ack lost after the commit) quarantines nothing twice.
    seq: int | None = None
    epoch: int = 0


def quarantine_owner(device_id: str) -> str:
    """The keyring owner of a device's quarantine key."""
    return f"quarantine:device:{device_id}"


def quarantine_aad(topic: str, received_at: dt.datetime) -> bytes:
    return f"quarantine|{topic}|{received_at.isoformat()}".encode()


async def _key_owners(conn: asyncpg.Connection, device_ids: list[str],
                      ) -> dict[str, str | None]:
    """Per registered device: the owner whose key seals its payloads (None: not kept)."""
    rows = await conn.fetch(
        """SELECT d.id, d.state, d.patient_id,
                  EXISTS (SELECT 1 FROM device_users u
                          WHERE u.device_id = d.id AND u.role = 'member') AS shared
           FROM devices d WHERE d.id = ANY($1::text[])""", device_ids)
    owners: dict[str, str | None] = {}
    for r in rows:
        if r["state"] in _OUT_OF_SERVICE:
            owners[r["id"]] = None
        elif r["state"] == "paired" and r["patient_id"] is not None and not r["shared"]:
            owners[r["id"]] = str(r["patient_id"])
        else:
            owners[r["id"]] = quarantine_owner(r["id"])
    return owners


async def _key(conn: asyncpg.Connection, keyring: Keyring, owner: str,
               ) -> tuple[int, bytes] | None:
    """The current key of ``owner``, a device's or the system's made on first use; None
    for a patient whose key is gone (being erased: their payload is not kept)."""
    try:
        return await keyring.current(conn, owner)
    except KeyUnavailable:
        if owner.startswith("quarantine:device:") or owner == system_owner(QUARANTINE_KEY):
            await keyring.create(conn, owner)  # ON CONFLICT DO NOTHING: racing bridges agree
            return await keyring.current(conn, owner)
        # A patient's key is made with the account, never here. Raising would fail the
        # whole batch, again at every redelivery; their data is not to be kept anyway.
        return None


async def write_quarantined(conn: asyncpg.Connection, keyring: Keyring,
                            items: Sequence[QuarantineIn]) -> None:
    """Seal and insert ``items`` in the caller's transaction."""
    owners = await _key_owners(conn, sorted({q.device_id for q in items if q.device_id}))
    rows: list[tuple[object, ...]] = []
    for q in items:
        if q.device_id is None or q.device_id not in owners:
            owner: str | None = system_owner(QUARANTINE_KEY)
        else:
            owner = owners[q.device_id]
        found = None if owner is None else await _key(conn, keyring, owner)
        if found is None:
            rows.append((q.received_at, q.device_id, q.topic, q.reason, q.detail, None, None,
                         None))
            continue
        version, key = found
        rows.append((q.received_at, q.device_id, q.topic, q.reason, q.detail,
                     seal(key, q.payload, quarantine_aad(q.topic, q.received_at)), owner,
                     version))
    await conn.executemany(
        """INSERT INTO quarantine (received_at, device_id, topic, reason, detail, sealed,
                                   key_owner, key_version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""", rows)


async def open_quarantined(conn: asyncpg.Connection, keyring: Keyring,
                           row: asyncpg.Record) -> bytes | None:
    """The payload of a ``quarantine`` row (None: not kept); IntegrityError if it was
    tampered with, KeyUnavailable once the key that sealed it is erased."""
    if row["sealed"] is None:
        return None
    key = await keyring.get(conn, row["key_owner"], row["key_version"])
    return open_sealed(key, row["sealed"], quarantine_aad(row["topic"], row["received_at"]))


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    received_at: dt.datetime
    device_id: str | None
    topic: str
    reason: str
    detail: str


async def list_quarantined(pool: asyncpg.Pool, *, reason: str | None = None,
                           device_id: str | None = None, limit: int = 100,
                           since: dt.datetime | None = None) -> list[Quarantined]:
    """The newest quarantine records first, filtered by reason, device and receipt time
    when given."""
    rows = await pool.fetch(
        """SELECT id, received_at, device_id, topic, reason, detail FROM quarantine
           WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR device_id = $2)
             AND ($4::timestamptz IS NULL OR received_at >= $4)
           ORDER BY id DESC LIMIT $3""", reason, device_id, max(0, min(limit, MAX_LISTED)),
        since)
    return [Quarantined(**dict(r)) for r in rows]


async def get_quarantined(pool: asyncpg.Pool, record_id: int) -> Quarantined | None:
    """One quarantine record's metadata (never its payload), or None."""
    row = await pool.fetchrow(
        """SELECT id, received_at, device_id, topic, reason, detail FROM quarantine
           WHERE id = $1""", record_id)
    return None if row is None else Quarantined(**dict(row))


async def purge_quarantined(pool: asyncpg.Pool, *, before: dt.datetime,
                            device_id: str | None = None, reason: str | None = None) -> int:
    """Delete the records received before ``before`` (of one device, one reason when given);
    returns how many. Maintenance does the same after the retention period."""
    status = await pool.execute(
        """DELETE FROM quarantine WHERE received_at < $1
             AND ($2::text IS NULL OR device_id = $2) AND ($3::text IS NULL OR reason = $3)""",
        before, device_id, reason)
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class RefusalCount:
    device_id: str | None
    reason: str
    count: int


async def refusals_between(pool: asyncpg.Pool, start: dt.datetime, end: dt.datetime, *,
                           device_id: str | None = None, reason: str | None = None,
                           limit: int = 100) -> list[Quarantined]:
    """The records received in [start, end), newest first, of one device and one reason
    when given; at most ``limit`` (capped at MAX_LISTED)."""
    rows = await pool.fetch(
        """SELECT id, received_at, device_id, topic, reason, detail FROM quarantine
           WHERE received_at >= $1 AND received_at < $2
             AND ($3::text IS NULL OR device_id = $3) AND ($4::text IS NULL OR reason = $4)
           ORDER BY received_at DESC, id DESC LIMIT $5""",
        start, end, device_id, reason, max(0, min(limit, MAX_LISTED)))
    return [Quarantined(**dict(r)) for r in rows]


async def count_refusals(pool: asyncpg.Pool, start: dt.datetime, end: dt.datetime, *,
                         device_id: str | None = None, reason: str | None = None,
                         ) -> list[RefusalCount]:
    """How many records each device has per reason in [start, end), all of them counted
    (a listing stops at its limit, the counts do not)."""
    rows = await pool.fetch(
        """SELECT device_id, reason, count(*) AS count FROM quarantine
           WHERE received_at >= $1 AND received_at < $2
             AND ($3::text IS NULL OR device_id = $3) AND ($4::text IS NULL OR reason = $4)
           GROUP BY device_id, reason ORDER BY device_id NULLS LAST, reason""",
        start, end, device_id, reason)
    return [RefusalCount(r["device_id"], r["reason"], r["count"]) for r in rows]


async def open_payloads(pool: asyncpg.Pool, keyring: Keyring, record_ids: Sequence[int],
                        ) -> dict[int, bytes | None]:
    """The payloads of ``record_ids``: None for one not kept, or whose key is erased."""
    found: dict[int, bytes | None] = {}
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT id, topic, received_at, sealed, key_owner, key_version FROM quarantine
               WHERE id = ANY($1::bigint[])""", list(record_ids))
        for row in rows:
            try:
                found[row["id"]] = await open_quarantined(conn, keyring, row)
            except KeyUnavailable:
                found[row["id"]] = None
    return found
