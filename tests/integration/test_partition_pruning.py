"""Reads prune partitions (native) and chunks (TimescaleDB) from both ends: a segment spans
less than a day, so a read bounds start_at from below as well as from above, and a one-day
read of a year of data touches one or two of them, not all."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import numpy as np

from healthiot.services import Core
from storage import partitioning
from storage.segments import Samples
from storage.store import MAX_SEGMENT_SPAN, SEGMENTS_IN_RANGE, MessageIn, SegmentIn
from tests.conftest import new_patient

DAY = dt.timedelta(days=1)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _message(patient: uuid.UUID, seq: int, times_ms: list[int]) -> MessageIn:
    t = np.array(times_ms, np.int64)
    return MessageIn("watch-prune", seq, dt.datetime.now(dt.UTC), [SegmentIn(
        patient, "heart_rate", Samples(t, np.full(len(t), 60.0), np.zeros(len(t), np.uint8)))],
        0)


def _scanned(plan: dict[str, Any]) -> set[str]:
    """Relations the executed plan really scanned (pruned ones are absent or never run)."""
    found = set()
    if "Relation Name" in plan and plan.get("Actual Loops", 0) > 0:
        found.add(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found |= _scanned(child)
    return found


async def _explain(conn: asyncpg.Connection, *args: object) -> set[str]:
    text = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + SEGMENTS_IN_RANGE, *args)
    return _scanned(json.loads(text)[0]["Plan"])


async def test_a_one_day_read_of_a_year_touches_one_or_two_partitions(
        core: Core, db_engine: str) -> None:
    patient, _, _ = await new_patient(core, "yearlong")
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - 366 * DAY  # a year back is 365 or 366 days: always 13 months touched
    async with core.pool.acquire() as conn:
        if db_engine == "native":  # the months of a year, as a year of running makes them
            await partitioning.ensure_months(conn, today,
                                             since=partitioning.month_start(first))
    # A year of days, one message each at noon.
    await core.store.ingest([_message(patient, i, [_ms(first + i * DAY + DAY / 2)])
                             for i in range(367)])
    async with core.pool.acquire() as conn:
        holding = await conn.fetchval(
            "SELECT count(DISTINCT tableoid) FROM segments WHERE patient_id = $1", patient)
        assert holding >= (13 if db_engine == "native" else 52)
        for day in (today - 100 * DAY, today - 200 * DAY + DAY / 3):
            args = (patient, "heart_rate", day, day + DAY, day - MAX_SEGMENT_SPAN)
            custom = await _explain(conn, *args)  # pruned when planned
            async with conn.transaction():  # and pruned at run time by a generic plan
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                generic = await _explain(conn, *args)
            assert 1 <= len(custom) <= 2, custom
            assert 1 <= len(generic) <= 2, generic
    series = await core.store.read_series(patient, "heart_rate", today - 100 * DAY,
                                          today - 99 * DAY)
    assert series.t_ms.tolist() == [_ms(today - 100 * DAY + DAY / 2)]


async def test_a_message_across_midnight_stays_one_segment_and_reads_whole(
        core: Core) -> None:
    patient, _, _ = await new_patient(core, "midnight")
    midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    times = [_ms(midnight) + s * 1000 for s in range(-30, 30)]
    await core.store.ingest([_message(patient, 1, times)])
    assert await core.pool.fetchval("SELECT count(*) FROM segments") == 1
    whole = await core.store.read_series(patient, "heart_rate", midnight - DAY, midnight + DAY)
    assert whole.t_ms.tolist() == times
    after = await core.store.read_series(patient, "heart_rate", midnight, midnight + DAY)
    assert after.t_ms.tolist() == times[30:]


async def test_a_backlog_of_days_is_stored_one_segment_per_utc_day(core: Core) -> None:
    patient, _, _ = await new_patient(core, "backlog")
    midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    times = [_ms(midnight - 2 * DAY) + h * 3_600_000 for h in range(0, 60, 6)]  # 2.5 days
    await core.store.ingest([_message(patient, 1, times)])
    rows = await core.pool.fetch("SELECT start_at, end_at FROM segments ORDER BY start_at")
    assert [(r["start_at"], r["end_at"]) for r in rows] == [
        (midnight - 2 * DAY, midnight - 2 * DAY + dt.timedelta(hours=18)),
        (midnight - DAY, midnight - DAY + dt.timedelta(hours=18)),
        (midnight, midnight + dt.timedelta(hours=6))]
    whole = await core.store.read_series(patient, "heart_rate", midnight - 3 * DAY,
                                         midnight + DAY)
    assert whole.t_ms.tolist() == times


async def test_the_table_refuses_a_segment_spanning_a_day(core: Core) -> None:
    now = dt.datetime.now(dt.UTC)
    try:
        await core.pool.execute(
            "INSERT INTO segments (id, patient_id, metric, device_id, start_at, end_at,"
            " samples, key_version, sealed) VALUES ($1, $2, 'heart_rate', 'w', $3, $4, 1, 1,"
            " '\\x00')", uuid.uuid4(), uuid.uuid4(), now - DAY, now)
    except asyncpg.CheckViolationError as exc:
        assert exc.constraint_name == "segments_within_one_day"
    else:
        raise AssertionError("a segment spanning 24 hours was accepted")
