"""Daily figures through the API and PostgreSQL: local days, two overlapping watches."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.conftest import new_patient
from vitals.days import day_bounds

QUARTER = 900_000


@pytest.fixture
async def setup(core) -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, str], uuid.UUID]]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens))
    patient, _, _ = await new_patient(core, "walker")
    for device in ("watch-a", "watch-b"):
        await core.pool.execute(
            "INSERT INTO devices (id, model, serial, patient_id, state)"
            " VALUES ($1, 'watch', $1, $2, 'paired')", device, patient)
    # 2026-10-25 in Paris: 25 hours. Watch A counts 100 steps every quarter hour all day;
    # watch B, worn at the same time from 08:00 to 20:00 local, 80.
    start, end = day_bounds(dt.date(2026, 10, 25), "Europe/Paris")
    t_a = np.arange(start, end, QUARTER, dtype=np.int64)
    t_b = np.arange(start + 9 * 3_600_000, start + 21 * 3_600_000, QUARTER, dtype=np.int64)
    now = dt.datetime.now(dt.UTC)
    await core.store.ingest([
        MessageIn("watch-a", 1, now, [SegmentIn(patient, "steps", Samples(
            t_a, np.full(len(t_a), 100.0), np.zeros(len(t_a), np.uint8)))], 0),
        MessageIn("watch-b", 1, now, [SegmentIn(patient, "steps", Samples(
            t_b, np.full(len(t_b), 80.0), np.zeros(len(t_b), np.uint8)))], 0)])
    headers = {"Authorization": "Bearer " + tokens.issue(str(patient), methods=["pwd", "otp"])}
    async with TestClient(TestServer(app)) as client:
        yield client, headers, patient


async def _day(client: TestClient[Any, Any], headers: dict[str, str]) -> dict[str, Any]:
    resp = await client.get("/v1/me/daily/steps", headers=headers,
                            params={"from": "2026-10-25", "to": "2026-10-25"})
    assert resp.status == 200, await resp.text()
    (day,) = (await resp.json())["days"]
    assert isinstance(day, dict)
    return day


async def test_overlapping_watches_count_once_by_priority(setup) -> None:  # type: ignore[no-untyped-def]
    client, headers, _ = setup
    resp = await client.put("/v1/me/timezone", json={"zone": "Europe/Paris"}, headers=headers)
    assert resp.status == 200
    day = await _day(client, headers)
    assert day["hours"] == 25
    assert day["value"] == 100 * 100  # watch A (first by id): 25 h x 4 x 100
    assert day["sources"] == {"watch-a": 10_000, "watch-b": 48 * 80}
    resp = await client.put("/v1/me/sources/steps", json={"device_ids": ["watch-b"]},
                            headers=headers)
    assert resp.status == 200
    day = await _day(client, headers)
    assert day["value"] == 48 * 80 + (100 - 48) * 100  # B where it has data, A elsewhere


async def test_sources_must_be_my_devices_and_zones_real(setup) -> None:  # type: ignore[no-untyped-def]
    client, headers, _ = setup
    resp = await client.put("/v1/me/sources/steps", json={"device_ids": ["someone-else"]},
                            headers=headers)
    assert resp.status == 422
    resp = await client.put("/v1/me/timezone", json={"zone": "Europe/Atlantis"},
                            headers=headers)
    assert resp.status == 422
    resp = await client.get("/v1/me/timezone", headers=headers)
    assert (await resp.json())["zone"] == "Europe/Paris"  # the default


async def test_a_move_keeps_past_days(setup) -> None:  # type: ignore[no-untyped-def]
    client, headers, _ = setup
    await client.put("/v1/me/timezone", json={"zone": "Europe/Paris"}, headers=headers)
    before = await _day(client, headers)
    await client.put("/v1/me/timezone", json={"zone": "America/Montreal"}, headers=headers)
    history = (await (await client.get("/v1/me/timezone", headers=headers)).json())["history"]
    assert [h["zone"] for h in history] == ["Europe/Paris", "America/Montreal"]
    assert await _day(client, headers) == before


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


async def _hourly_steps(core, patient: uuid.UUID, device: str, start_ms: int,  # type: ignore[no-untyped-def]
                        hours: int, value: float = 100.0) -> None:
    t = start_ms + np.arange(hours, dtype=np.int64) * 3_600_000
    await core.store.ingest([MessageIn(device, 2, dt.datetime.now(dt.UTC), [SegmentIn(
        patient, "steps", Samples(t, np.full(hours, value), np.zeros(hours, np.uint8)))], 0)])


@pytest.mark.parametrize(("day", "hours"), [(dt.date(2026, 3, 29), 23.0),
                                            (dt.date(2026, 10, 25), 25.0)])
async def test_vitals_1d_buckets_are_local_days_across_dst(setup, core, day: dt.date,  # type: ignore[no-untyped-def]
                                                           hours: float) -> None:
    client, headers, patient = setup
    await client.put("/v1/me/timezone", json={"zone": "Europe/Paris"}, headers=headers)
    first, _ = day_bounds(day - dt.timedelta(days=1), "Europe/Paris")
    _, last = day_bounds(day + dt.timedelta(days=1), "Europe/Paris")
    await core.pool.execute("DELETE FROM segments")  # this test's own data only
    await _hourly_steps(core, patient, "watch-a", first - 48 * 3_600_000,
                        (last - first) // 3_600_000 + 96)
    resp = await client.get("/v1/me/vitals/steps", headers=headers, params={
        "resolution": "1d", "from": _iso(first), "to": _iso(last)})
    assert resp.status == 200, await resp.text()
    buckets = (await resp.json())["buckets"]
    assert [b["date"] for b in buckets] == [
        (day + dt.timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
    assert [b["hours"] for b in buckets] == [24.0, hours, 24.0]
    assert [b["value"] for b in buckets] == [2400.0, 100 * hours, 2400.0]
    # The same as /daily, day for day.
    resp = await client.get("/v1/me/daily/steps", headers=headers, params={
        "from": (day - dt.timedelta(days=1)).isoformat(),
        "to": (day + dt.timedelta(days=1)).isoformat()})
    assert [d["value"] for d in (await resp.json())["days"]] == [b["value"] for b in buckets]


async def test_a_trip_recorded_late_changes_days_from_its_instant_only(setup, core) -> None:  # type: ignore[no-untyped-def]
    client, headers, patient = setup
    await core.pool.execute("DELETE FROM segments")
    june = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)
    await _hourly_steps(core, patient, "watch-a", june, 24 * 20)
    await client.put("/v1/me/timezone", json={"zone": "Europe/Paris"}, headers=headers)

    async def days() -> dict[str, tuple[float, float]]:
        resp = await client.get("/v1/me/daily/steps", headers=headers,
                                params={"from": "2026-06-03", "to": "2026-06-15"})
        assert resp.status == 200, await resp.text()
        return {d["date"]: (d["hours"], d["value"]) for d in (await resp.json())["days"]}

    before = await days()
    assert set(before.values()) == {(24.0, 2400.0)}
    # Flew to Montreal on June 8 at 10:00 UTC, back to Paris on June 12 at 20:00 UTC,
    # both told a month later.
    resp = await client.put("/v1/me/timezone", headers=headers, json={
        "zone": "America/Montreal", "effective_from": "2026-06-08T12:00:00+02:00"})
    assert resp.status == 200, await resp.text()
    resp = await client.put("/v1/me/timezone", headers=headers, json={
        "zone": "Europe/Paris", "effective_from": "2026-06-12T20:00:00Z"})
    assert resp.status == 200, await resp.text()
    zones = (await resp.json())["history"]
    assert [(z["effective_from"][:16], z["zone"]) for z in zones] == [
        ("1970-01-01T00:00", "Europe/Paris"), ("2026-06-08T10:00", "America/Montreal"),
        ("2026-06-12T20:00", "Europe/Paris")]
    after = await days()
    for d in ("2026-06-03", "2026-06-04", "2026-06-05", "2026-06-06", "2026-06-07",
              "2026-06-13", "2026-06-14", "2026-06-15"):
        assert after[d] == before[d], d  # before the flight, and after the return
    # June 8 runs from Paris midnight to Montreal midnight: 30 hours; the day of the
    # return (Montreal 16:00 = Paris 22:00) loses the 6 hours back.
    assert after["2026-06-08"] == (30.0, 3000.0)
    assert after["2026-06-12"] == (18.0, 1800.0)
    assert after["2026-06-10"] == (24.0, 2400.0)
    # The Montreal days start at 04:00 UTC through /vitals as well.
    resp = await client.get("/v1/me/vitals/steps", headers=headers, params={
        "resolution": "1d", "from": "2026-06-10T04:00:00Z", "to": "2026-06-11T04:00:00Z"})
    (bucket,) = (await resp.json())["buckets"]
    assert (bucket["date"], bucket["t"], bucket["value"]) == (
        "2026-06-10", "2026-06-10T04:00:00.000Z", 2400.0)


async def test_effective_from_must_not_be_in_the_future_nor_without_offset(setup) -> None:  # type: ignore[no-untyped-def]
    client, headers, _ = setup
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    for moment in (future, "2026-06-08T10:00:00", "1970-01-01T00:00:00Z", "soon"):
        resp = await client.put("/v1/me/timezone", headers=headers, json={
            "zone": "America/Montreal", "effective_from": moment})
        assert resp.status == 422, moment
        assert resp.content_type == "application/problem+json"
    resp = await client.get("/v1/me/timezone", headers=headers)
    assert (await resp.json())["history"] == []


async def test_a_first_zone_from_a_past_instant_keeps_the_default_before(setup) -> None:  # type: ignore[no-untyped-def]
    client, headers, _ = setup
    before = await _day(client, headers)  # 2026-10-25 in the default zone, Paris
    resp = await client.put("/v1/me/timezone", headers=headers, json={
        "zone": "Asia/Kolkata", "effective_from": "2026-10-26T00:00:00Z"})
    assert resp.status == 200
    assert [z["zone"] for z in (await resp.json())["history"]] == ["Europe/Paris",
                                                                    "Asia/Kolkata"]
    assert await _day(client, headers) == before


async def test_daily_ends_today_where_the_patient_is(setup) -> None:  # type: ignore[no-untyped-def]
    client, headers, _ = setup
    # Kiritimati is 14 hours ahead of UTC, Pago Pago 11 hours behind: one of the two
    # is always on another date than UTC, and they are never on the same date.
    answers = []
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        await client.put("/v1/me/timezone", json={"zone": zone}, headers=headers)
        resp = await client.get("/v1/me/daily/steps", headers=headers)
        assert resp.status == 200
        last = (await resp.json())["days"][-1]["date"]
        expected = dt.datetime.now(ZoneInfo(zone)).date().isoformat()
        assert last == expected
        answers.append(last)
    assert answers[0] != answers[1]
