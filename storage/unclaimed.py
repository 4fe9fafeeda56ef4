"""Held weighings of a shared scale, as its users see them: list, claim, dismiss.

A user sees the weighings held since they joined the scale (one joining later does not see
the household's earlier weighings) that they have not dismissed. Claiming moves a weighing
into the claimer's own sealed data, as if the bridge had attributed it, and removes it for
everyone, in one transaction: two users claiming at once cannot both get it. Dismissing
hides it for that user; it is removed once every user who sees it has dismissed it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg
import numpy as np

from storage.held import open_held
from storage.keyring import Keyring
from storage.segments import Samples
from storage.store import SegmentIn, Store

_VISIBLE = """
    FROM unclaimed_readings r
    JOIN device_users u ON u.device_id = r.device_id AND u.patient_id = $2
    WHERE r.device_id = $1 AND u.joined_at <= r.held_at
      AND NOT EXISTS (SELECT 1 FROM unclaimed_dismissals x
                      WHERE x.reading_id = r.id AND x.patient_id = $2)"""
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_COLUMNS = "r.id, r.device_id, r.seq, r.measured_at, r.held_at, r.reason, r.key_version, r.sealed"


@dataclass(frozen=True, slots=True)
class HeldReading:
    id: uuid.UUID
    device_id: str
    measured_at: dt.datetime
    held_at: dt.datetime
    reason: str
    values: dict[str, tuple[float, int]]  # metric -> (value in canonical unit, flags)


class Unclaimed:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, store: Store) -> None:
        self._pool = pool
        self._keyring = keyring
        self._store = store

    async def visible(self, device_id: str, patient_id: uuid.UUID) -> list[HeldReading]:
        """What ``patient_id`` sees held on ``device_id``, oldest weighing first (nothing
        when they do not use the device)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} {_VISIBLE} ORDER BY r.measured_at",
                                    device_id, patient_id)
            return [await self._opened(conn, r) for r in rows]

    async def claim(self, device_id: str, reading_id: uuid.UUID, patient_id: uuid.UUID,
                    ) -> HeldReading | None:
        """Make a held weighing ``patient_id``'s data; None when they do not see it (not a
        user, dismissed, claimed already by someone else, or no such reading)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} {_VISIBLE} AND r.id = $3 FOR UPDATE OF r",
                device_id, patient_id, reading_id)
            if row is None:
                return None
            reading = await self._opened(conn, row)
            t = np.array([(reading.measured_at - _EPOCH) // _MS], np.int64)  # exact
            await self._store.write_segments(conn, device_id, [
                SegmentIn(patient_id, metric, Samples(t, np.array([value]),
                                                      np.array([flags], np.uint8)))
                for metric, (value, flags) in sorted(reading.values.items())])
            await conn.execute("DELETE FROM unclaimed_readings WHERE id = $1", reading_id)
        return reading

    async def dismiss(self, device_id: str, reading_id: uuid.UUID,
                      patient_id: uuid.UUID) -> bool:
        """"Not mine": hide it for ``patient_id``; False when they do not see it."""
        async with self._pool.acquire() as conn, conn.transaction():
            seen = await conn.fetchval(
                f"SELECT r.id {_VISIBLE} AND r.id = $3 FOR UPDATE OF r",
                device_id, patient_id, reading_id)
            if seen is None:
                return False
            await conn.execute(
                "INSERT INTO unclaimed_dismissals (reading_id, patient_id) VALUES ($1, $2)",
                reading_id, patient_id)
            await conn.fetchval("SELECT unclaimed_sweep($1)", device_id)
        return True

    async def _opened(self, conn: asyncpg.Connection, row: asyncpg.Record) -> HeldReading:
        return HeldReading(row["id"], row["device_id"], row["measured_at"], row["held_at"],
                           row["reason"], await open_held(conn, self._keyring, row))
