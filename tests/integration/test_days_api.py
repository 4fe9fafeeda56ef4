"""Daily figures through the API and PostgreSQL: local days, two overlapping watches."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

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
