"""Rollups: per-hour and per-day statistics of a patient's metric, sealed like segments.

A '1h' row holds the 24 hours of one UTC day; a '1d' row the days of one UTC month. Each
bucket keeps count, sum, min, max, mean and standard deviation: enough for summaries and
charts at those resolutions, and for merging buckets later. The maintenance job recomputes
the day (and that day's bucket of the month) whenever segments arrive for it, late ones
included; the ``rolled_up`` flag marks what it has seen.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
import zlib
from dataclasses import dataclass

import asyncpg
import numpy as np
import numpy.typing as npt

from storage.crypto import open_sealed, seal
from storage.errors import IntegrityError, KeyUnavailable
from storage.keyring import Keyring
from storage.store import MAX_SEGMENT_SPAN, Store
from vitals.normalise import reliable
from vitals.resample import bucketise

HOUR_MS, DAY_MS = 3_600_000, 86_400_000
_HEADER = struct.Struct("<BI")
_VERSION = 1
_FIELDS = ("count", "total", "minimum", "maximum", "mean", "std")


@dataclass(frozen=True, slots=True)
class Stats:
    """Statistics per bucket; ``t_ms`` is each bucket's start."""

    t_ms: npt.NDArray[np.int64]
    count: npt.NDArray[np.float64]
    total: npt.NDArray[np.float64]
    minimum: npt.NDArray[np.float64]
    maximum: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.t_ms)

    @staticmethod
    def empty() -> Stats:
        z = np.zeros(0)
        return Stats(np.zeros(0, np.int64), z, z, z, z, z, z)

    def select(self, keep: npt.NDArray[np.bool_]) -> Stats:
        return Stats(self.t_ms[keep], *(getattr(self, f)[keep] for f in _FIELDS))

    @staticmethod
    def concat(parts: list[Stats]) -> Stats:
        if not parts:
            return Stats.empty()
        joined = Stats(np.concatenate([p.t_ms for p in parts]),
                       *(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))
        return joined.sorted()

    def sorted(self) -> Stats:
        order = np.argsort(self.t_ms, kind="stable")
        return Stats(self.t_ms[order], *(getattr(self, f)[order] for f in _FIELDS))


def compute(t_ms: npt.NDArray[np.int64], value: npt.NDArray[np.float64], width_ms: int
            ) -> Stats:
    b = bucketise(t_ms, value, width_ms)
    count = b.count.astype(np.float64)
    return Stats(b.t_ms, count, b.mean * count, b.minimum, b.maximum, b.mean, b.std)


def pack(stats: Stats) -> bytes:
    body = stats.t_ms.astype("<i8").tobytes() + b"".join(
        getattr(stats, f).astype("<f8").tobytes() for f in _FIELDS)
    return _HEADER.pack(_VERSION, len(stats)) + zlib.compress(body, 6)


def unpack(blob: bytes) -> Stats:
    try:
        version, n = _HEADER.unpack_from(blob)
        body = zlib.decompress(blob[_HEADER.size:])
    except (struct.error, zlib.error) as exc:
        raise IntegrityError(f"rollup does not unpack: {exc}") from None
    if version != _VERSION or len(body) != n * 8 * (1 + len(_FIELDS)):
        raise IntegrityError("rollup has an unknown layout")
    cols = [np.frombuffer(body, "<f8", n, n * 8 * (i + 1)).astype(np.float64)
            for i in range(len(_FIELDS))]
    return Stats(np.frombuffer(body, "<i8", n).astype(np.int64), *cols)


def _aad(patient_id: uuid.UUID, metric: str, resolution: str, window: dt.datetime,
         buckets: int, version: int) -> bytes:
    return (f"rollup|{patient_id}|{metric}|{resolution}|{window.isoformat()}|{buckets}|"
            f"{version}").encode()


def _utc_day(moment: dt.datetime) -> dt.datetime:
    return dt.datetime(moment.year, moment.month, moment.day, tzinfo=dt.UTC)


def _month(moment: dt.datetime) -> dt.datetime:
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)


class Rollups:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, store: Store) -> None:
        self._pool = pool
        self._keyring = keyring
        self._store = store

    async def _put(self, conn: asyncpg.Connection, patient_id: uuid.UUID, metric: str,
                   resolution: str, window: dt.datetime, stats: Stats) -> None:
        version, key = await self._keyring.current(conn, str(patient_id))
        aad = _aad(patient_id, metric, resolution, window, len(stats), version)
        await conn.execute(
            """INSERT INTO rollups (patient_id, metric, resolution, window_start, buckets,
                                    key_version, sealed)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (patient_id, metric, resolution, window_start) DO UPDATE
               SET buckets = $5, key_version = $6, sealed = $7, computed_at = now()""",
            patient_id, metric, resolution, window, len(stats), version,
            seal(key, pack(stats), aad))

    async def _get(self, conn: asyncpg.Connection, row: asyncpg.Record) -> Stats:
        key = await self._keyring.get(conn, str(row["patient_id"]), row["key_version"])
        aad = _aad(row["patient_id"], row["metric"], row["resolution"], row["window_start"],
                   row["buckets"], row["key_version"])
        return unpack(open_sealed(key, row["sealed"], aad))

    async def read(self, patient_id: uuid.UUID, metric: str, resolution: str,
                   start: dt.datetime, end: dt.datetime) -> tuple[Stats, set[dt.datetime]]:
        """Stored buckets in [start, end), and the windows they came from."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT * FROM rollups WHERE patient_id = $1 AND metric = $2
                   AND resolution = $3 AND window_start < $5
                   AND window_start >= $4::timestamptz - interval '31 days'""",
                patient_id, metric, resolution, start, end)
            parts = [await self._get(conn, r) for r in rows]
        stats = Stats.concat(parts)
        lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        keep = (stats.t_ms >= lo) & (stats.t_ms < hi)
        return stats.select(keep), {r["window_start"] for r in rows}

    async def roll_up_pending(self, limit: int = 200) -> int:
        """Recompute the days that received segments since the last pass; returns how many
        (patient, metric, day) were done."""
        async with self._pool.acquire() as conn:
            pending = await conn.fetch(
                """SELECT DISTINCT patient_id, metric,
                          generate_series(date_trunc('day', start_at, 'UTC'),
                                          date_trunc('day', end_at, 'UTC'),
                                          interval '1 day') AS day
                   FROM segments WHERE NOT rolled_up LIMIT $1""", limit)
        for row in pending:
            try:
                await self.roll_up_day(row["patient_id"], row["metric"], row["day"])
            except (IntegrityError, KeyUnavailable):
                # A segment of that day does not open: set it aside, and the day is summed
                # from the rest. Nothing set aside means another cause: raised as it was.
                day = _utc_day(row["day"])
                if not await self._store.set_aside_unopenable(
                        row["patient_id"], row["metric"], day, day + dt.timedelta(days=1)):
                    raise
                await self.roll_up_day(row["patient_id"], row["metric"], row["day"])
        return len(pending)

    async def roll_up_day(self, patient_id: uuid.UUID, metric: str, day: dt.datetime) -> None:
        day = _utc_day(day)
        end = day + dt.timedelta(days=1)
        async with self._pool.acquire() as conn:
            seen = [r["id"] for r in await conn.fetch(
                """SELECT id FROM segments WHERE patient_id = $1 AND metric = $2
                   AND NOT rolled_up AND end_at >= $3 AND start_at < $4 AND start_at > $5""",
                patient_id, metric, day, end, day - MAX_SEGMENT_SPAN)]
        samples = await self._store.read_series(patient_id, metric, day, end)
        clean = reliable(samples.flags)  # doubtful samples wait for review: not in summaries
        t, v = samples.t_ms[clean], samples.value[clean]
        hours = compute(t, v, HOUR_MS)
        day_bucket = compute(t, v, DAY_MS)
        month = _month(day)
        async with self._pool.acquire() as conn, conn.transaction():
            await self._put(conn, patient_id, metric, "1h", day, hours)
            existing = await conn.fetchrow(
                """SELECT * FROM rollups WHERE patient_id = $1 AND metric = $2
                   AND resolution = '1d' AND window_start = $3 FOR UPDATE""",
                patient_id, metric, month)
            days = await self._get(conn, existing) if existing else Stats.empty()
            day_ms = int(day.timestamp() * 1000)
            days = Stats.concat([days.select(days.t_ms != day_ms), day_bucket])
            await self._put(conn, patient_id, metric, "1d", month, days)
            # A segment that runs past midnight is done when its last day is.
            await conn.execute(
                "UPDATE segments SET rolled_up = true WHERE id = ANY($1::uuid[])"
                " AND end_at < $2", seen, end)
