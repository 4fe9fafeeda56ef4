"""Several devices measuring one metric, through the API and PostgreSQL: counted once by the
patient's priority in daily figures and summaries, each still readable alone, and only the
patient's own devices."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import passwords, totp
from api.app import create_app
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from storage.clinicians import Clinicians
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.conftest import new_patient
from vitals.days import day_bounds
from vitals.rpps import luhn_ok

QUARTER = 900_000
MINUTE = 60_000
DAY = dt.date(2026, 6, 10)  # 24 h in Paris: 2026-06-09T22:00Z to 2026-06-10T22:00Z
START, END = day_bounds(DAY, "Europe/Paris")
LOW, HIGH = 60.0, 100.0  # steps per quarter hour of the two watches


@dataclass
class World:
    client: TestClient[Any, Any]
    headers: dict[str, str]
    patient: uuid.UUID
    other_patient: uuid.UUID
    core: Any
    tokens: TokenService


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, np.uint8)


@pytest.fixture
async def world(core) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    """Two watches worn together all day on one patient: "watch-hi" counts 100 steps a
    quarter hour, "watch-lo" 60 (it misses steps the other counts, or the other counts
    arm swings). Heart rate from both, every minute from 08:00 to 12:00 local: 60 on one,
    90 on the other. Another patient owns "watch-other"."""
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens))
    patient, _, _ = await new_patient(core, "two-watches")
    other, _, _ = await new_patient(core, "someone-else")
    for device, owner in (("watch-hi", patient), ("watch-lo", patient),
                          ("watch-other", other)):
        await core.pool.execute(
            "INSERT INTO devices (id, model, serial, patient_id, state)"
            " VALUES ($1, 'watch', $1, $2, 'paired')", device, owner)
    t = np.arange(START, END, QUARTER, dtype=np.int64)
    hr_t = np.arange(START + 10 * 3_600_000, START + 14 * 3_600_000, MINUTE, dtype=np.int64)
    now = dt.datetime.now(dt.UTC)
    await core.store.ingest([
        MessageIn("watch-hi", 1, now, [
            SegmentIn(patient, "steps", Samples(t, np.full(len(t), HIGH), _zeros(len(t)))),
            SegmentIn(patient, "heart_rate", Samples(hr_t, np.full(len(hr_t), 90.0),
                                                     _zeros(len(hr_t))))], 0),
        MessageIn("watch-lo", 1, now, [
            # 20 s later than the other watch: the two series interleave.
            SegmentIn(patient, "steps", Samples(t + 20_000, np.full(len(t), LOW),
                                                _zeros(len(t)))),
            SegmentIn(patient, "heart_rate", Samples(hr_t + 20_000, np.full(len(hr_t), 60.0),
                                                     _zeros(len(hr_t))))], 0),
        MessageIn("watch-other", 1, now, [
            SegmentIn(other, "steps", Samples(t, np.full(len(t), 7.0), _zeros(len(t))))], 0)])
    headers = {"Authorization": "Bearer " + tokens.issue(str(patient), methods=["pwd", "otp"])}
    async with TestClient(TestServer(app)) as client:
        resp = await client.put("/v1/me/timezone", json={"zone": "Europe/Paris"},
                                headers=headers)
        assert resp.status == 200
        yield World(client, headers, patient, other, core, tokens)


async def _prefer(w: World, device: str) -> None:
    for metric in ("steps", "heart_rate"):
        resp = await w.client.put(f"/v1/me/sources/{metric}", json={"device_ids": [device]},
                                  headers=w.headers)
        assert resp.status == 200, await resp.text()


async def _daily(w: World) -> dict[str, Any]:
    resp = await w.client.get("/v1/me/daily/steps", headers=w.headers,
                              params={"from": DAY.isoformat(), "to": DAY.isoformat()})
    assert resp.status == 200, await resp.text()
    (day,) = (await resp.json())["days"]
    assert isinstance(day, dict)
    return day


async def _vitals_1d(w: World, metric: str = "steps") -> dict[str, Any]:
    resp = await w.client.get(f"/v1/me/vitals/{metric}", headers=w.headers, params={
        "resolution": "1d", "from": _iso(START), "to": _iso(END)})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_the_priority_source_counts_even_when_it_has_the_lower_total(
        world: World) -> None:
    low_total, high_total = 96 * LOW, 96 * HIGH
    # By default (same model) the first id counts: watch-hi.
    assert (await _daily(world))["value"] == high_total
    await _prefer(world, "watch-lo")
    day = await _daily(world)
    assert day["value"] == low_total == 5760
    assert day["value"] != max(low_total, high_total)
    assert day["value"] != low_total + high_total
    assert day["sources"] == {"watch-lo": low_total, "watch-hi": high_total}
    assert day["counted"] == {"watch-lo": 96}
    # The same day through /vitals at 1d: the same figure, not the UTC day's sum.
    body = await _vitals_1d(world)
    assert body["source_order"] == ["watch-lo", "watch-hi"] and body["zone"] == "Europe/Paris"
    (bucket,) = body["buckets"]
    assert bucket["date"] == DAY.isoformat() and bucket["t"] == "2026-06-09T22:00:00.000Z"
    assert bucket["value"] == bucket["total"] == low_total
    assert bucket["count"] == 96 and bucket["max"] == LOW and bucket["hours"] == 24


async def test_summary_counts_two_watches_once(world: World) -> None:
    params = {"from": _iso(START), "to": _iso(END)}
    await _prefer(world, "watch-lo")
    resp = await world.client.get("/v1/me/summary", headers=world.headers, params=params)
    assert resp.status == 200, await resp.text()
    metrics = (await resp.json())["metrics"]
    steps, hr = metrics["steps"], metrics["heart_rate"]
    assert steps["count"] == 96 and steps["max"] == LOW  # not 192 samples of two watches
    assert hr["count"] == 240 and hr["mean"] == 60.0 and hr["max"] == 60.0  # not 75
    assert hr["wear_minutes"] == 240 and hr["wear_minutes_by_day"] == {"2026-06-10": 240}
    assert steps["wear_minutes_by_day"] == {"2026-06-10": 96}
    # The other order: the other watch alone.
    await _prefer(world, "watch-hi")
    resp = await world.client.get("/v1/me/summary", headers=world.headers, params=params)
    assert (await resp.json())["metrics"]["heart_rate"]["mean"] == 90.0


def _rpps(seed: int) -> str:
    ten = f"1{seed:09d}"
    return next(ten + k for k in "0123456789" if luhn_ok(ten + k))


async def test_clinician_summary_counts_two_watches_once(world: World) -> None:
    rpps = _rpps(7)
    clinician = await Clinicians(world.core.pool, world.core.keyring).create(
        rpps=rpps, profession="physician", display_name="Dr Sources", username="sources",
        password_hash=passwords.hash_password("a long clinician passphrase"),
        totp_secret=totp.new_secret())
    now = dt.datetime.now(dt.UTC)
    resp = await world.client.post("/v1/me/consents", headers=world.headers, json={
        "clinician_rpps": rpps, "metrics": ["steps", "heart_rate"], "categories": [],
        "data_from": _iso(START - 86_400_000), "data_to": now.isoformat(),
        "expires_at": (now + dt.timedelta(days=30)).isoformat()})
    assert resp.status == 201, await resp.text()
    await _prefer(world, "watch-lo")
    token = world.tokens.issue(f"clinician:{clinician.id}", methods=["pwd", "otp"])
    resp = await world.client.get(
        f"/v1/clinician/patients/{world.patient}/summary",
        params={"from": _iso(START), "to": _iso(END)},
        headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    metrics = (await resp.json())["metrics"]
    assert metrics["steps"]["count"] == 96 and metrics["steps"]["mean"] == LOW
    assert metrics["heart_rate"]["count"] == 240 and metrics["heart_rate"]["mean"] == 60.0


async def test_each_device_raw_samples_are_readable_alone(world: World) -> None:
    params = {"from": _iso(START), "to": _iso(END)}
    resp = await world.client.get("/v1/me/vitals/steps", headers=world.headers, params=params)
    assert len((await resp.json())["samples"]) == 192  # both watches, raw as stored
    for device, value in (("watch-lo", LOW), ("watch-hi", HIGH)):
        resp = await world.client.get("/v1/me/vitals/steps", headers=world.headers,
                                      params={**params, "device": device})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["device"] == device and len(body["samples"]) == 96
        assert {s["v"] for s in body["samples"]} == {value}


async def test_another_patients_device_is_refused(world: World) -> None:
    params = {"from": _iso(START), "to": _iso(END)}
    for device in ("watch-other", "no-such-watch"):
        resp = await world.client.get("/v1/me/vitals/steps", headers=world.headers,
                                      params={**params, "device": device})
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert "samples" not in await resp.json()
    # A device is for raw samples; days per device are in /daily's "sources".
    resp = await world.client.get("/v1/me/vitals/steps", headers=world.headers,
                                  params={**params, "device": "watch-lo", "resolution": "1h"})
    assert resp.status == 400
