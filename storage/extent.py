"""Where a patient's stored samples lie in time: what lets a search scan only the part of
the timeline that holds data, without a hidden default window (FHIR search, issue 21)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg


async def data_extent(pool: asyncpg.Pool, patient_id: uuid.UUID, metrics: Sequence[str],
                      start: dt.datetime, end: dt.datetime
                      ) -> tuple[dt.datetime, dt.datetime] | None:
    """The first segment start and the last segment end of ``metrics`` among the segments
    that overlap [start, end); None when there are none. Bounds only: no data is opened."""
    row = await pool.fetchrow(
        """SELECT min(start_at) AS lo, max(end_at) AS hi FROM segments
           WHERE patient_id = $1 AND metric = ANY($2::text[])
           AND end_at >= $3 AND start_at < $4""", patient_id, list(metrics), start, end)
    if row is None or row["lo"] is None:
        return None
    return row["lo"], row["hi"]
