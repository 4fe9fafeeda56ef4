"""A patient's zone history and source order, and their daily figures from stored samples."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg
import numpy as np

from storage.segments import Samples
from storage.store import Store
from vitals.daily import NIGHT_SHIFT_MS, NIGHTLY, DayFigure, daily, priority_order
from vitals.days import DEFAULT_ZONE, ZoneSpan, days_touched, validate_zone
from vitals.normalise import reliable

MAX_DAYS = 366
CHUNK_DAYS = 31  # days read and computed at once (see _figures)
HISTORY_START = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # the first zone's row


class Days:
    def __init__(self, pool: asyncpg.Pool, store: Store) -> None:
        self._pool = pool
        self._store = store

    async def zone_history(self, patient_id: uuid.UUID) -> list[ZoneSpan]:
        rows = await self._pool.fetch(
            "SELECT effective_from, zone FROM patient_time_zones WHERE patient_id = $1"
            " ORDER BY effective_from", patient_id)
        return [ZoneSpan(int(r["effective_from"].timestamp() * 1000), r["zone"]) for r in rows]

    async def set_zone(self, patient_id: uuid.UUID, zone: str,
                       effective_from: dt.datetime | None = None) -> list[ZoneSpan]:
        """The zone from ``effective_from`` (default now) until the next recorded change,
        if any; days before keep theirs. A past ``effective_from`` fixes a trip recorded
        late (the return is then a second call); a future one is refused (ValueError), as
        is one at or before the start of the history. The first zone ever set without
        ``effective_from`` also covers the time before it (there is no earlier one); with
        it, the time before keeps the default zone it was grouped in until then."""
        validate_zone(zone)
        now = dt.datetime.now(dt.UTC)
        if effective_from is not None:
            if effective_from.tzinfo is None:
                raise ValueError("effective_from needs a time zone offset")
            if effective_from > now:
                raise ValueError("effective_from must not be in the future")
            if effective_from <= HISTORY_START:
                raise ValueError("effective_from must be after 1970-01-01T00:00:00Z")
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise changes of one patient: "first" must stay true until we insert.
            await conn.execute("SELECT 1 FROM patients WHERE id = $1 FOR UPDATE", patient_id)
            first = await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM patient_time_zones WHERE patient_id = $1)",
                patient_id)
            rows = [(effective_from or now, zone)]
            if first:
                rows = ([(HISTORY_START, DEFAULT_ZONE), *rows] if effective_from
                        else [(HISTORY_START, zone)])
            await conn.executemany(
                """INSERT INTO patient_time_zones (patient_id, effective_from, zone)
                   VALUES ($1, $2, $3) ON CONFLICT (patient_id, effective_from)
                   DO UPDATE SET zone = $3""",
                [(patient_id, moment, name) for moment, name in rows])
        return await self.zone_history(patient_id)

    async def source_order(self, patient_id: uuid.UUID, metric: str) -> list[str]:
        found = await self._pool.fetchval(
            "SELECT device_ids FROM source_priorities WHERE patient_id = $1 AND metric = $2",
            patient_id, metric)
        return list(found or [])

    async def set_source_order(self, patient_id: uuid.UUID, metric: str,
                               device_ids: Sequence[str]) -> None:
        await self._pool.execute(
            """INSERT INTO source_priorities (patient_id, metric, device_ids)
               VALUES ($1, $2, $3) ON CONFLICT (patient_id, metric)
               DO UPDATE SET device_ids = $3, updated_at = now()""",
            patient_id, metric, list(device_ids))

    async def by_source(self, patient_id: uuid.UUID, metric: str,
                        windows: Sequence[tuple[dt.datetime, dt.datetime]]
                        ) -> tuple[dict[str, Samples], list[str]]:
        """Each source's samples (flags kept) in the disjoint ``windows``, and the order in
        which sources count, best first."""
        parts: dict[str, list[Samples]] = {}
        for lo, hi in windows:
            for device, samples in (await self._store.read_by_source(
                    patient_id, metric, lo, hi)).items():
                parts.setdefault(device, []).append(samples)
        per_source = {d: _joined(p) for d, p in parts.items()}
        return per_source, await self.order_of(patient_id, metric, list(per_source))

    async def order_of(self, patient_id: uuid.UUID, metric: str,
                       sources: Sequence[str]) -> list[str]:
        """``sources`` best first: the patient's order, then by device model, then by id."""
        models = dict(await self._pool.fetch(
            "SELECT id, model FROM devices WHERE id = ANY($1::text[])", list(sources)))
        return priority_order(list(sources), models, metric,
                              await self.source_order(patient_id, metric))

    async def figures(self, patient_id: uuid.UUID, metric: str, first: dt.date,
                      last: dt.date) -> tuple[list[DayFigure], list[str], list[ZoneSpan]]:
        """Daily figures for the local days first..last, with the source order used."""
        if not first <= last or (last - first).days >= MAX_DAYS:
            raise ValueError(f"give 1 to {MAX_DAYS} days, first before last")
        history = await self.zone_history(patient_id)
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        figures, order = await self._figures(patient_id, metric, days, history, None)
        return figures, order, history

    async def figures_between(self, patient_id: uuid.UUID, metric: str, start: dt.datetime,
                              end: dt.datetime
                              ) -> tuple[list[DayFigure], list[str], list[ZoneSpan]]:
        """The figures of the local days with samples in [start, end); a day cut by the
        range counts its part inside only. Days without data are left out."""
        history = await self.zone_history(patient_id)
        shift = NIGHT_SHIFT_MS if metric in NIGHTLY else 0
        days = days_touched(history, _ms(start), _ms(end), shift)
        if len(days) > MAX_DAYS + 2:  # a year, and the days it starts and ends in
            raise ValueError(f"at most {MAX_DAYS} days")
        figures, order = await self._figures(patient_id, metric, days, history, (start, end))
        return [f for f in figures if f.count], order, history

    async def _figures(self, patient_id: uuid.UUID, metric: str, days: list[dt.date],
                       history: list[ZoneSpan],
                       clip: tuple[dt.datetime, dt.datetime] | None
                       ) -> tuple[list[DayFigure], list[str]]:
        out: list[DayFigure] = []
        seen: set[str] = set()
        # A month at a time: a year of 1 Hz heart rate from two watches is 60 million
        # samples, too many to hold at once; a month of them is a few hundred MB at most.
        for i in range(0, len(days), CHUNK_DAYS):
            chunk = days[i:i + CHUNK_DAYS]
            # Read wider than the UTC days: zones run from -12 h to +14 h and nights start
            # at noon the day before; the grouping then keeps only what belongs to each day.
            lo = dt.datetime.combine(chunk[0] - dt.timedelta(days=2), dt.time(), dt.UTC)
            hi = dt.datetime.combine(chunk[-1] + dt.timedelta(days=2), dt.time(), dt.UTC)
            if clip is not None:
                lo, hi = max(lo, clip[0]), min(hi, clip[1])
            per_source, order = await self.by_source(patient_id, metric, [(lo, hi)])
            seen.update(per_source)
            clean = {d: (s.t_ms[reliable(s.flags)], s.value[reliable(s.flags)])
                     for d, s in per_source.items()}
            # numpy over a month of samples: off the event loop.
            out += await asyncio.to_thread(daily, metric, clean, order, history, chunk)
        return out, await self.order_of(patient_id, metric, sorted(seen))


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _joined(parts: list[Samples]) -> Samples:
    if len(parts) == 1:
        return parts[0]
    return Samples(np.concatenate([p.t_ms for p in parts]),
                   np.concatenate([p.value for p in parts]),
                   np.concatenate([p.flags for p in parts]))
