"""What the operator sees of the quarantine: when, which device, why; never the payload,
which stays sealed (storage.store writes it)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

MAX_LISTED = 10_000  # a listing is for reading, not for exporting the table


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    received_at: dt.datetime
    device_id: str | None
    topic: str
    reason: str
    detail: str


async def list_quarantined(pool: asyncpg.Pool, *, reason: str | None = None,
                           device_id: str | None = None, limit: int = 100
                           ) -> list[Quarantined]:
    """The newest quarantine records first, filtered by reason and device when given."""
    rows = await pool.fetch(
        """SELECT id, received_at, device_id, topic, reason, detail FROM quarantine
           WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR device_id = $2)
           ORDER BY id DESC LIMIT $3""", reason, device_id, max(0, min(limit, MAX_LISTED)))
    return [Quarantined(**dict(r)) for r in rows]
