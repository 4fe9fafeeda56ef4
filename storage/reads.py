"""A patient's metric over a time range at raw, 1-minute, 1-hour or 1-day resolution.

Hours and days come from the rollups where they are up to date; a day (or month) whose
rollup is missing or has segments the maintenance job has not seen yet is computed from the
raw samples instead, so a read is never stale.

These buckets are technical: UTC-aligned, every source together (the rollups do not keep
sources apart). Daily figures a patient or clinician sees come from storage/days.py instead:
local days of the patient's zone history, one source per overlapping period.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import numpy as np

from storage.rollups import DAY_MS, HOUR_MS, Rollups, Stats, compute
from storage.store import MAX_SEGMENT_SPAN, Store
from vitals.normalise import reliable

WIDTH_MS = {"1m": 60_000, "1h": HOUR_MS, "1d": DAY_MS}
RESOLUTIONS = ("raw", *WIDTH_MS)


async def read_stats(pool: asyncpg.Pool, store: Store, rollups: Rollups,
                     patient_id: uuid.UUID, metric: str, start: dt.datetime,
                     end: dt.datetime, resolution: str) -> Stats:
    """Buckets of ``resolution`` (1m, 1h or 1d) in [start, end)."""
    width = WIDTH_MS[resolution]
    if resolution == "1m":
        s = await store.read_series(patient_id, metric, start, end)
        clean = reliable(s.flags)
        return compute(s.t_ms[clean], s.value[clean], width)
    stored, windows = await rollups.read(patient_id, metric, resolution, start, end)
    stale = {r["day"] for r in await pool.fetch(
        """SELECT DISTINCT generate_series(date_trunc('day', start_at, 'UTC'),
                                           date_trunc('day', end_at, 'UTC'),
                                           interval '1 day') AS day
           FROM segments WHERE patient_id = $1 AND metric = $2 AND NOT rolled_up
           AND end_at >= $3 AND start_at < $4 AND start_at > $5""",
        patient_id, metric, start, end, start - MAX_SEGMENT_SPAN)}
    first = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
    days = [first + dt.timedelta(days=i) for i in range((end - first).days + 1)
            if first + dt.timedelta(days=i) < end]
    # A day is served from rollups when it lies whole in the range, its rollup exists and
    # no segment of it is pending; partial first and last days are computed exactly.
    covered = {d for d in days if start <= d and d + dt.timedelta(days=1) <= end
               and _window(d, resolution) in windows and d not in stale}
    day_of_bucket = stored.t_ms - stored.t_ms % DAY_MS
    covered_ms = np.array([int(d.timestamp() * 1000) for d in covered], np.int64)
    parts = [stored.select(np.isin(day_of_bucket, covered_ms))]
    # The other days come from raw samples, one read per run of consecutive days.
    run: list[dt.datetime] = []
    for day in [*days, None]:
        if day is not None and day not in covered:
            run.append(day)
            continue
        if run:
            lo, hi = max(start, run[0]), min(end, run[-1] + dt.timedelta(days=1))
            s = await store.read_series(patient_id, metric, lo, hi)
            clean = reliable(s.flags)
            parts.append(compute(s.t_ms[clean], s.value[clean], width))
            run = []
    return Stats.concat(parts)


def _window(day: dt.datetime, resolution: str) -> dt.datetime:
    """The rollup row a day's buckets live in: the day itself for hours, its month for days."""
    return day if resolution == "1h" else dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC)
