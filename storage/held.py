"""Weighings held for a shared scale's users to claim, sealed under the device's own key.

A weighing the bridge could not attribute belongs to nobody yet, so it cannot be sealed
under a patient's key: it is sealed under the key of owner ``device:<id>``, created on first
use. Unpairing the device (or erasing its owner) deletes that key, and what was held
becomes unreadable in every copy, as for a patient (migration 090, storage/erasure.py).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.errors import KeyUnavailable
from storage.keyring import Keyring


def device_owner(device_id: str) -> str:
    """The keyring owner whose key seals a device's held weighings."""
    return f"device:{device_id}"


@dataclass(frozen=True, slots=True)
class HeldWeighing:
    """One weighing of a shared scale, not attributed: its values per metric in canonical
    units, with their quality flags."""

    measured_at: dt.datetime
    reason: str
    values: Mapping[str, tuple[float, int]]  # metric -> (value, flags)


def held_aad(reading_id: uuid.UUID, device_id: str, seq: int, measured_at: dt.datetime,
             held_at: dt.datetime, key_version: int) -> bytes:
    # The row's identity: a blob copied to another row or device does not open.
    return (f"unclaimed|{reading_id}|{device_id}|{seq}|{measured_at.isoformat()}|"
            f"{held_at.isoformat()}|{key_version}").encode()


async def device_key(conn: asyncpg.Connection, keyring: Keyring, device_id: str,
                     ) -> tuple[int, bytes]:
    """The device's current (version, key), created on first use."""
    owner = device_owner(device_id)
    try:
        return await keyring.current(conn, owner)
    except KeyUnavailable:
        await keyring.create(conn, owner)  # ON CONFLICT DO NOTHING: a racing bridge is fine
        return await keyring.current(conn, owner)


async def hold(conn: asyncpg.Connection, keyring: Keyring, device_id: str, seq: int,
               held_at: dt.datetime, items: Sequence[HeldWeighing]) -> None:
    """Write ``items`` of one device message, sealed, in the caller's transaction."""
    version, key = await device_key(conn, keyring, device_id)
    rows = []
    for item in items:
        reading_id = uuid.uuid4()
        plaintext = json.dumps({m: [v, f] for m, (v, f) in item.values.items()}).encode()
        aad = held_aad(reading_id, device_id, seq, item.measured_at, held_at, version)
        rows.append((reading_id, device_id, seq, item.measured_at, held_at, item.reason,
                     version, seal(key, plaintext, aad)))
    await conn.executemany(
        """INSERT INTO unclaimed_readings (id, device_id, seq, measured_at, held_at, reason,
                                           key_version, sealed)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""", rows)


async def open_held(conn: asyncpg.Connection, keyring: Keyring, row: asyncpg.Record,
                    ) -> dict[str, tuple[float, int]]:
    """The values of an ``unclaimed_readings`` row; IntegrityError if it was tampered with
    or moved, KeyUnavailable once the device's key is erased."""
    key = await keyring.get(conn, device_owner(row["device_id"]), row["key_version"])
    aad = held_aad(row["id"], row["device_id"], row["seq"], row["measured_at"],
                   row["held_at"], row["key_version"])
    values = json.loads(open_sealed(key, row["sealed"], aad))
    return {m: (float(v), int(f)) for m, (v, f) in values.items()}
