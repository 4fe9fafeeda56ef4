"""A patient's zone history and source order, and their daily figures from stored samples."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from storage.store import Store
from vitals.daily import DayFigure, daily, priority_order
from vitals.days import ZoneSpan, validate_zone

MAX_DAYS = 366


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
        """The zone from ``effective_from`` (default now) on; days before keep theirs. The
        first zone ever set also covers the time before it (there is no earlier one)."""
        validate_zone(zone)
        moment = effective_from or dt.datetime.now(dt.UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            first = await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM patient_time_zones WHERE patient_id = $1)",
                patient_id)
            await conn.execute(
                """INSERT INTO patient_time_zones (patient_id, effective_from, zone)
                   VALUES ($1, $2, $3) ON CONFLICT (patient_id, effective_from)
                   DO UPDATE SET zone = $3""",
                patient_id, dt.datetime(1970, 1, 1, tzinfo=dt.UTC) if first else moment, zone)
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

    async def figures(self, patient_id: uuid.UUID, metric: str, first: dt.date,
                      last: dt.date) -> tuple[list[DayFigure], list[str], list[ZoneSpan]]:
        """Daily figures for the local days first..last, with the source order used."""
        if not first <= last or (last - first).days >= MAX_DAYS:
            raise ValueError(f"give 1 to {MAX_DAYS} days, first before last")
        history = await self.zone_history(patient_id)
        # Read wider than the UTC days: zones run from -12 h to +14 h and nights start at
        # noon the day before; the grouping then keeps only what belongs to each day.
        start = dt.datetime.combine(first - dt.timedelta(days=2), dt.time(), dt.UTC)
        end = dt.datetime.combine(last + dt.timedelta(days=2), dt.time(), dt.UTC)
        per_source = await self._store.read_by_source(patient_id, metric, start, end)
        models = dict(await self._pool.fetch(
            "SELECT id, model FROM devices WHERE id = ANY($1::text[])", list(per_source)))
        order = priority_order(list(per_source), models, metric,
                               await self.source_order(patient_id, metric))
        clean = {d: (s.t_ms[s.flags == 0], s.value[s.flags == 0])
                 for d, s in per_source.items()}
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        return daily(metric, clean, order, history, days), order, history
