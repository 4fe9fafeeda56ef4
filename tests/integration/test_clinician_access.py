"""Clinicians through the real application and PostgreSQL: consent before, during and after,
only the granted metrics and period, FHIR answers that validate, every access in the
patient's log."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from api import passwords, totp
from api.app import create_app
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from storage.clinicians import Clinicians
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.conftest import new_patient
from vitals.errors import InvalidProfessional
from vitals.rpps import luhn_ok

DAY = dt.timedelta(days=1)


def rpps_number(seed: int) -> str:
    ten = f"1{seed:09d}"
    return next(ten + k for k in "0123456789" if luhn_ok(ten + k))


@dataclass
class World:
    client: TestClient[Any, Any]
    tokens: TokenService
    patient: uuid.UUID
    patient_token: str
    clinician: uuid.UUID
    clinician_token: str
    rpps: str
    now: dt.datetime
    core: Any

    def as_patient(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.patient_token}"}

    def as_clinician(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.clinician_token}"}


async def _seed(core, patient: uuid.UUID, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    """Ten days of hourly heart rate and a daily weighing, ending now."""
    start = int((now - 10 * DAY).timestamp() * 1000)
    hours = start + np.arange(240, dtype=np.int64) * 3_600_000
    days = start + np.arange(10, dtype=np.int64) * 86_400_000
    await core.store.ingest([MessageIn("watch-x", 1, now, [
        SegmentIn(patient, "heart_rate", Samples(hours, 60 + (np.arange(240) % 20.0),
                                                 np.zeros(240, np.uint8))),
        SegmentIn(patient, "body_weight", Samples(days, 80 + np.arange(10) / 10,
                                                  np.zeros(10, np.uint8)))], 0)])


@pytest.fixture
async def world(core) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens))
    patient, _, _ = await new_patient(core, "pat")
    rpps = rpps_number(1)
    clinician = await Clinicians(core.pool, core.keyring).create(
        rpps=rpps, profession="physician", display_name="Dr Martin", username="martin",
        password_hash=passwords.hash_password("a long clinician passphrase"),
        totp_secret=totp.new_secret())
    now = dt.datetime.now(dt.UTC)
    await _seed(core, patient, now)
    async with TestClient(TestServer(app)) as client:
        yield World(client, tokens, patient, tokens.issue(str(patient), methods=["pwd", "otp"]),
                    clinician.id, tokens.issue(f"clinician:{clinician.id}",
                                               methods=["pwd", "otp"]), rpps, now, core)


async def _grant(w: World, **overrides: Any) -> dict[str, Any]:
    body = {"clinician_rpps": w.rpps, "metrics": ["heart_rate"], "categories": [],
            "data_from": (w.now - 5 * DAY).isoformat(), "data_to": w.now.isoformat(),
            "expires_at": (w.now + 30 * DAY).isoformat()} | overrides
    resp = await w.client.post("/v1/me/consents", json=body, headers=w.as_patient())
    assert resp.status == 201, await resp.text()
    granted: dict[str, Any] = await resp.json()
    return granted


def _routes(w: World) -> list[str]:
    p = w.patient
    return [f"/v1/clinician/patients/{p}/summary", f"/v1/clinician/patients/{p}/charts/heart_rate",
            f"/fhir/Patient/{p}", f"/fhir/Observation?patient={p}"]


async def test_before_grant_every_clinician_route_is_403(world: World) -> None:
    for route in _routes(world):
        resp = await world.client.get(route, headers=world.as_clinician())
        assert resp.status == 403, route
    # A patient that does not exist answers the same: ids cannot be probed.
    resp = await world.client.get(f"/fhir/Patient/{uuid.uuid4()}", headers=world.as_clinician())
    assert resp.status == 403
    OperationOutcome.model_validate(await resp.json())


async def test_after_grant_only_the_granted_metrics_and_period(world: World) -> None:
    await _grant(world)
    resp = await world.client.get(
        f"/v1/clinician/patients/{world.patient}/summary",
        params={"from": (world.now - 10 * DAY).isoformat(), "to": world.now.isoformat()},
        headers=world.as_clinician())
    assert resp.status == 200
    summary = await resp.json()
    assert list(summary["metrics"]) == ["heart_rate"]  # weight is not shared: not there
    hr = summary["metrics"]["heart_rate"]
    assert hr["count"] == 5 * 24  # five granted days of the ten stored
    assert hr["min"] == 60 and hr["max"] == 79 and hr["unit"] == "/min"

    resp = await world.client.get("/fhir/Observation", headers=world.as_clinician(), params={
        "patient": str(world.patient), "date": [f"ge{(world.now - 10 * DAY).isoformat()}"],
        "_total": "accurate"})
    bundle = await resp.json()
    Bundle.model_validate(bundle)
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]}
    assert codes == {"8867-4"}
    # SampledData claims no ANS profile: those allow only valueQuantity (issue 20).
    assert not any("meta" in e["resource"] for e in bundle["entry"])
    # Hourly samples: one SampledData Observation per hour with one value, a page of 50.
    assert bundle["total"] == 5 * 24 and len(bundle["entry"]) == 50
    assert {e["resource"]["valueSampledData"]["data"].count(" ") for e in bundle["entry"]} == {0}
    # Asking for weight finds nothing rather than an error that reveals it exists.
    resp = await world.client.get("/fhir/Observation", headers=world.as_clinician(),
                                  params={"patient": str(world.patient), "code": "29463-7",
                                          "_summary": "count"})
    assert (await resp.json())["total"] == 0
    resp = await world.client.get(f"/v1/clinician/patients/{world.patient}/charts/body_weight",
                                  headers=world.as_clinician())
    assert resp.status == 404
    resp = await world.client.get(f"/v1/clinician/patients/{world.patient}/charts/heart_rate",
                                  headers=world.as_clinician())
    assert resp.status == 200 and resp.content_type == "image/svg+xml"


async def test_fhir_paging(world: World) -> None:
    await _grant(world, metrics=["body_weight"], categories=[],
                 data_from=(world.now - 10 * DAY).isoformat())
    seen: list[str] = []
    since = urlencode({"date": f"ge{(world.now - 11 * DAY).isoformat()}",
                       "_total": "accurate"})
    url: str | None = f"/fhir/Observation?patient={world.patient}&_count=4&{since}"
    while url:
        resp = await world.client.get(url, headers=world.as_clinician())
        page = await resp.json()
        Bundle.model_validate(page)
        assert page["total"] == 10
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page.get("link", [])
                    if link["relation"] == "next"), None)
        if url:
            url = url[url.index("/fhir"):]
    assert len(seen) == len(set(seen)) == 10


async def test_revocation_is_effective_on_the_next_request(world: World) -> None:
    consent = await _grant(world)
    route = f"/v1/clinician/patients/{world.patient}/summary"
    assert (await world.client.get(route, headers=world.as_clinician())).status == 200
    resp = await world.client.delete(f"/v1/me/consents/{consent['id']}",
                                     headers=world.as_patient())
    assert resp.status == 204
    assert (await world.client.get(route, headers=world.as_clinician())).status == 403


async def test_an_expired_consent_gives_no_access(world: World, core) -> None:  # type: ignore[no-untyped-def]
    await _grant(world)
    await core.pool.execute("UPDATE consents SET expires_at = now() - interval '1 second'")
    resp = await world.client.get(f"/v1/clinician/patients/{world.patient}/summary",
                                  headers=world.as_clinician())
    assert resp.status == 403


async def test_each_access_is_in_the_patients_access_log(world: World) -> None:
    await world.client.get(_routes(world)[0], headers=world.as_clinician())  # refused
    await _grant(world)
    await world.client.get(_routes(world)[3], headers=world.as_clinician())  # allowed
    resp = await world.client.get("/v1/me/access-log", headers=world.as_patient())
    entries = (await resp.json())["entries"]
    mine = [(e["action"], e["outcome"], e["rpps"]) for e in entries if e["rpps"]]
    assert ("search", "ok", world.rpps) in mine and ("read", "refused", world.rpps) in mine
    assert all(e["who"] == "Dr Martin (physician)" for e in entries if e["rpps"])
    resp = await world.client.get("/v1/me/access-log", params={"format": "fhir"},
                                  headers=world.as_patient())
    bundle = await resp.json()
    Bundle.model_validate(bundle)
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"AuditEvent"}


async def test_roles_and_factors_are_enforced(world: World) -> None:
    resp = await world.client.get(_routes(world)[0], headers=world.as_patient())
    assert resp.status == 403  # a patient token on a clinician route
    resp = await world.client.get("/v1/me/consents", headers=world.as_clinician())
    assert resp.status == 403  # a clinician token on a patient route
    one_factor = world.tokens.issue(f"clinician:{world.clinician}", methods=["pwd"])
    await _grant(world)
    resp = await world.client.get(_routes(world)[0],
                                  headers={"Authorization": f"Bearer {one_factor}"})
    assert resp.status == 403


@pytest.mark.parametrize(("change", "status"), [
    ({"clinician_rpps": "10000000000"}, 422),  # unknown (and a wrong key)
    ({"metrics": ["heart_rate", "blood_alcohol"]}, 422),
    ({"metrics": [], "categories": []}, 422),
    ({"expires_at": "2020-01-01T00:00:00+00:00"}, 422),
    ({"data_from": "yesterday"}, 422),
])
async def test_bad_grants_are_refused(world: World, change: dict[str, Any], status: int) -> None:
    body = {"clinician_rpps": world.rpps, "metrics": ["heart_rate"], "categories": [],
            "data_from": (world.now - DAY).isoformat(), "data_to": world.now.isoformat(),
            "expires_at": (world.now + DAY).isoformat()} | change
    resp = await world.client.post("/v1/me/consents", json=body, headers=world.as_patient())
    assert resp.status == status
    assert resp.content_type == "application/problem+json"


async def test_categories_expand_at_grant_time(world: World) -> None:
    granted = await _grant(world, metrics=[], categories=["body"])
    assert granted["metrics"] == ["body_fat", "body_temperature", "body_weight",
                                  "skin_temperature"]


async def test_only_professions_bound_by_secrecy_with_a_valid_rpps(core) -> None:  # type: ignore[no-untyped-def]
    clinicians = Clinicians(core.pool, core.keyring)
    for rpps, profession in ((rpps_number(2), "sports_coach"), ("12345678901", "physician")):
        with pytest.raises(InvalidProfessional):
            await clinicians.create(rpps=rpps, profession=profession, display_name="x",
                                    username=f"u{rpps}", password_hash="h",
                                    totp_secret=b"s" * 20)


async def test_each_observation_references_the_device_that_measured_it(world: World,
                                                                        core) -> None:  # type: ignore[no-untyped-def]
    """Two scales weigh the same patient: the FHIR answer keeps the sources apart, each
    Observation with its own device and its own id, even at the same instant."""
    start = int((world.now - 10 * DAY).timestamp() * 1000)
    days = start + np.arange(10, dtype=np.int64) * 86_400_000
    await core.store.ingest([MessageIn("scale-b", 1, world.now, [SegmentIn(
        world.patient, "body_weight", Samples(days[:3], np.array([70.0, 70.5, 71.0]),
                                              np.zeros(3, np.uint8)))], 0)])
    await _grant(world, metrics=["body_weight", "heart_rate"],
                 data_from=(world.now - 10 * DAY).isoformat())
    resp = await world.client.get("/fhir/Observation", headers=world.as_clinician(), params={
        "patient": str(world.patient), "code": "29463-7", "_count": "50",
        "date": f"ge{(world.now - 11 * DAY).isoformat()}"})
    bundle = await resp.json()
    Bundle.model_validate(bundle)
    devices = [e["resource"]["device"]["reference"] for e in bundle["entry"]]
    assert sorted(devices) == ["Device/scale-b"] * 3 + ["Device/watch-x"] * 10
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(set(ids)) == len(ids) == 13
    resp = await world.client.get("/fhir/Observation", headers=world.as_clinician(), params={
        "patient": str(world.patient), "code": "8867-4", "_count": "5"})
    page = await resp.json()
    Bundle.model_validate(page)
    assert {e["resource"]["device"]["reference"] for e in page["entry"]} == {"Device/watch-x"}


async def test_fhir_patient_read_needs_consent(world: World) -> None:
    route = f"/fhir/Patient/{world.patient}"
    resp = await world.client.get(route, headers=world.as_clinician())
    assert resp.status == 403 and resp.content_type == "application/fhir+json"
    OperationOutcome.model_validate(await resp.json())
    await _grant(world)
    resp = await world.client.get(route, headers=world.as_clinician())
    assert resp.status == 200 and resp.content_type == "application/fhir+json"
    patient = await resp.json()
    Patient.model_validate(patient)
    assert patient["id"] == str(world.patient)
    # Another patient, a made-up id, a malformed one: the same refusal, nothing to probe.
    other, _, _ = await new_patient(world.core, "someone-else")
    for bad in (other, uuid.uuid4(), "not-a-uuid"):
        resp = await world.client.get(f"/fhir/Patient/{bad}", headers=world.as_clinician())
        assert resp.status == 403, bad
        OperationOutcome.model_validate(await resp.json())
    # No token at all: 401, still an OperationOutcome.
    resp = await world.client.get(route)
    assert resp.status == 401
    OperationOutcome.model_validate(await resp.json())


async def test_fhir_metadata_over_http(world: World) -> None:
    resp = await world.client.get("/fhir/metadata")  # public, as FHIR clients expect
    assert resp.status == 200 and resp.content_type == "application/fhir+json"
    cap = await resp.json()
    CapabilityStatement.model_validate(cap)
    assert cap["fhirVersion"] == "4.0.1"
    assert cap["implementation"]["url"].endswith("/fhir")
    types = {r["type"] for r in cap["rest"][0]["resource"]}
    assert types == {"Patient", "Device", "Observation"}


async def test_revocation_closes_the_fhir_routes_on_the_next_request(world: World) -> None:
    consent = await _grant(world)
    search = f"/fhir/Observation?patient={world.patient}"
    read = f"/fhir/Patient/{world.patient}"
    first = await world.client.get(search, headers=world.as_clinician())
    assert first.status == 200 and (await first.json())["entry"]
    assert (await world.client.get(read, headers=world.as_clinician())).status == 200
    resp = await world.client.delete(f"/v1/me/consents/{consent['id']}",
                                     headers=world.as_patient())
    assert resp.status == 204
    for route in (search, read):
        resp = await world.client.get(route, headers=world.as_clinician())
        assert resp.status == 403, route
        outcome = await resp.json()
        OperationOutcome.model_validate(outcome)
        assert outcome["issue"][0]["code"] == "forbidden"
    resp = await world.client.get("/v1/me/access-log", headers=world.as_patient())
    mine = [(e["action"], e["outcome"]) for e in (await resp.json())["entries"] if e["rpps"]]
    assert mine[:2] == [("read", "refused"), ("search", "refused")]  # newest first
    assert ("search", "ok") in mine[2:]


async def test_an_observations_device_reference_resolves_with_consent(world: World) -> None:
    await world.core.pool.execute(
        "INSERT INTO devices (id, model, serial, patient_id, state)"
        " VALUES ('watch-x', 'watch', 'W-0007', $1, 'paired')", world.patient)
    assert (await world.client.get("/fhir/Device/watch-x",
                                   headers=world.as_clinician())).status == 403
    await _grant(world)
    resp = await world.client.get("/fhir/Observation", headers=world.as_clinician(),
                                  params={"patient": str(world.patient), "_count": "1"})
    reference = (await resp.json())["entry"][0]["resource"]["device"]["reference"]
    resp = await world.client.get(f"/fhir/{reference}", headers=world.as_clinician())
    assert resp.status == 200 and resp.content_type == "application/fhir+json"
    device = await resp.json()
    Device.model_validate(device)
    assert (device["id"], device["serialNumber"]) == ("watch-x", "W-0007")
    assert device["patient"] == {"reference": f"Patient/{world.patient}"}
    # An unknown device, and another patient's, answer like no consent.
    other, _, _ = await new_patient(world.core, "other-owner")
    await world.core.pool.execute(
        "INSERT INTO devices (id, model, serial, patient_id, state)"
        " VALUES ('watch-z', 'watch', 'W-0008', $1, 'paired')", other)
    for device_id in ("watch-z", "watch-nobody"):
        resp = await world.client.get(f"/fhir/Device/{device_id}",
                                      headers=world.as_clinician())
        assert resp.status == 403, device_id
        OperationOutcome.model_validate(await resp.json())
    assert (await world.client.get("/fhir/Device/watch-nobody")).status == 401
    log = await (await world.client.get("/v1/me/access-log", headers=world.as_patient())).json()
    assert ("read", "ok", "fhir/Device/watch-x") in [
        (e["action"], e["outcome"], e["what"]) for e in log["entries"]]
