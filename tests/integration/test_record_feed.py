"""The medical-record feed against a small local FHIR receiver: an endpoint down for a while
loses nothing and creates nothing twice; refusals reach the patient as a readable status."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device

from api.app import create_app
from api.record_feed import FeedConfig, FeedSender
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from healthiot.localservers import free_port
from storage.record_feed import RecordFeed
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.conftest import new_patient

OID = "1.2.250.1.999.1"
INS = "123456789012345"


@dataclass
class Receiver:
    """A FHIR server that honours conditional create; it can be down or refuse."""

    mode: str = "up"  # up, 503, 403, 422
    posts: int = 0
    received: Counter[str] = field(default_factory=Counter)  # accepted posts per identifier
    created: set[str] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.mode == "503":
            return web.Response(status=503)
        body = await request.json()
        Bundle.model_validate(body)  # what we send is valid FHIR, or the test fails here
        if self.mode == "403":
            return _outcome(403, "Consent not given")
        if self.mode == "422":
            return _outcome(422, "Observation.code: unknown code")
        answers = []
        for entry in body["entry"]:
            ident = entry["request"]["ifNoneExist"].split("|", 1)[1]
            self.received[ident] += 1
            answers.append({"response": {
                "status": "200 OK" if ident in self.created else "201 Created"}})
            self.created.add(ident)
        return web.json_response({"resourceType": "Bundle", "type": "transaction-response",
                                  "entry": answers}, content_type="application/fhir+json")


def _outcome(status: int, text: str) -> web.Response:
    return web.json_response({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "forbidden", "diagnostics": text}]}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str, web.AppRunner]]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/fhir", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state, f"http://127.0.0.1:{port}/fhir", runner
    await runner.cleanup()


@pytest.fixture
async def feed_setup(core, receiver):  # type: ignore[no-untyped-def]
    state, url, runner = receiver
    patient, _, _ = await new_patient(core, "feed")
    now = dt.datetime.now(dt.UTC)
    t0 = int(now.timestamp() * 1000) - 3 * 86_400_000
    days = t0 + np.arange(3, dtype=np.int64) * 86_400_000
    segments = [
        SegmentIn(patient, "body_weight", Samples(days, np.array([80.1, 80.4, 79.9]),
                                                  np.array([0, 0, 0], np.uint8))),
        SegmentIn(patient, "systolic_bp", Samples(days[:1], np.array([128.0]),
                                                  np.zeros(1, np.uint8))),
        SegmentIn(patient, "diastolic_bp", Samples(days[:1], np.array([82.0]),
                                                   np.zeros(1, np.uint8))),
        # A flagged reading waits for review and is not fed.
        SegmentIn(patient, "body_temperature", Samples(days[:1], np.array([41.5]),
                                                       np.ones(1, np.uint8))),
    ]
    await core.store.ingest([MessageIn("scale-1", 1, now, segments, 0)])
    feed = RecordFeed(core.pool, core.keyring)
    await feed.set_consent(patient, True, INS)
    async with aiohttp.ClientSession() as session:
        sender = FeedSender(feed, core.store, core.audit, session,
                            FeedConfig(url=url, sender_oid=OID, base_backoff_s=0.0))
        yield patient, feed, sender, state, runner


async def test_endpoint_down_then_up_loses_nothing_and_creates_nothing_twice(feed_setup):
    patient, feed, sender, state, _ = feed_setup
    assert await sender.collect() == 4  # three weighings and one blood pressure
    state.mode = "503"
    assert await sender.send_due() == {"sent": 0, "refused": 0, "retry": 4}
    assert (await feed.status(patient)).pending == 4
    state.mode = "up"
    assert await sender.send_due() == {"sent": 4, "refused": 0, "retry": 0}
    assert sorted(state.received.values()) == [1, 1, 1, 1]  # each reading delivered once
    # Collecting again queues nothing; nothing is due; nothing is posted again.
    posts = state.posts
    assert await sender.collect() == 0
    assert await sender.send_due() == {"sent": 0, "refused": 0, "retry": 0}
    assert state.posts == posts
    status = await feed.status(patient)
    assert (status.pending, status.sent, status.refused) == (0, 4, 0)
    assert sum("/blood_pressure/" in k for k in state.created) == 1


async def test_a_post_repeated_after_a_crash_creates_nothing_twice(feed_setup, core):
    patient, _feed, sender, state, _ = feed_setup
    await sender.collect()
    await sender.send_due()
    # A sender that died after posting but before recording it: the entry is due again.
    await core.pool.execute("UPDATE record_feed_outbox SET state = 'pending',"
                            " next_attempt_at = now() WHERE patient_id = $1", patient)
    assert (await sender.send_due())["sent"] == 4
    assert sorted(state.received.values()) == [2, 2, 2, 2]
    assert len(state.created) == 4  # the conditional create made the repeat harmless


async def test_endpoint_unreachable_is_retried_later(feed_setup, core):
    patient, feed, sender, _state, runner = feed_setup
    await sender.collect()
    await runner.cleanup()  # connection refused
    assert (await sender.send_due())["retry"] == 4
    assert (await feed.status(patient)).pending == 4
    errors = await core.pool.fetch("SELECT attempts, last_error FROM record_feed_outbox")
    assert all(r["attempts"] == 1 and "unreachable" in r["last_error"] for r in errors)


async def test_consent_refused_by_the_record_is_readable_by_the_patient(feed_setup, core):
    patient, feed, sender, state, _ = feed_setup
    state.mode = "403"
    await sender.collect()
    assert (await sender.send_due())["refused"] == 4
    status = await feed.status(patient)
    assert status.refused == 4
    assert status.last_refusal == ("the medical record refused: consent not given: "
                                   "Consent not given")
    audit = await core.audit.for_patient(patient)
    assert [(r["action"], r["outcome"]) for r in audit].count(("feed", "refused")) == 4


async def test_invalid_reading_answer_is_kept_with_its_reason(feed_setup):
    patient, feed, sender, state, _ = feed_setup
    state.mode = "422"
    await sender.collect()
    await sender.send_due()
    status = await feed.status(patient)
    assert status.refused == 4
    assert status.last_refusal is not None and "unknown code" in status.last_refusal


async def test_withdrawn_consent_stops_what_is_queued(feed_setup):
    patient, feed, sender, state, _ = feed_setup
    await sender.collect()
    await feed.set_consent(patient, False, INS)
    assert (await sender.send_due())["refused"] == 4
    assert state.posts == 0
    assert await sender.collect() == 0  # a patient without consent is not collected


async def test_the_outbox_holds_no_health_data_in_clear(feed_setup, core):
    _patient, _feed, sender, _, _ = feed_setup
    await sender.collect()
    rows = await core.pool.fetch("SELECT sealed FROM record_feed_outbox")
    assert rows and all(b"80.1" not in r["sealed"] and INS.encode() not in r["sealed"]
                        for r in rows)
    ins_row = await core.pool.fetchval("SELECT ins_sealed FROM record_feed_consents")
    assert INS.encode() not in ins_row


@dataclass
class Capture:
    """A receiver that keeps each accepted bundle."""

    bundles: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        Bundle.model_validate(body)
        self.bundles.append(body)
        return web.json_response({"resourceType": "Bundle", "type": "transaction-response",
                                  "entry": [{"response": {"status": "201 Created"}}
                                            for _ in body["entry"]]})


@pytest.fixture
async def capture() -> AsyncIterator[tuple[Capture, str]]:
    state = Capture()
    app = web.Application()
    app.router.add_post("/fhir", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state, f"http://127.0.0.1:{port}/fhir"
    await runner.cleanup()


async def test_a_registered_device_travels_with_its_readings(core, capture) -> None:  # type: ignore[no-untyped-def]
    """A reading of a registered glucometer goes with a PHD Device that the Observation
    references; a reading of an unknown source goes alone; glucose says its moment."""
    state, url = capture
    patient, _, _ = await new_patient(core, "glucose")
    await core.pool.execute(
        "INSERT INTO devices (id, model, serial, patient_id, state)"
        " VALUES ('glucometer-0a1b2c', 'glucometer', 'GM-0042', $1, 'paired')", patient)
    now = dt.datetime.now(dt.UTC)
    t = int(now.timestamp() * 1000) - 3_600_000
    await core.store.ingest([
        MessageIn("glucometer-0a1b2c", 1, now, [SegmentIn(
            patient, "blood_glucose", Samples(np.array([t], np.int64), np.array([104.0]),
                                              np.zeros(1, np.uint8)))], 0),
        MessageIn("unknown-scale", 1, now, [SegmentIn(
            patient, "body_weight", Samples(np.array([t + 1], np.int64), np.array([80.0]),
                                            np.zeros(1, np.uint8)))], 0)])
    feed = RecordFeed(core.pool, core.keyring)
    await feed.set_consent(patient, True, INS)
    async with aiohttp.ClientSession() as session:
        sender = FeedSender(feed, core.store, core.audit, session,
                            FeedConfig(url=url, sender_oid=OID, base_backoff_s=0.0))
        assert await sender.collect() == 2
        assert (await sender.send_due())["sent"] == 2
    by_kind = {tuple(e["resource"]["resourceType"] for e in b["entry"]): b
               for b in state.bundles}
    assert set(by_kind) == {("Device", "Observation"), ("Observation",)}
    device_entry, obs_entry = by_kind[("Device", "Observation")]["entry"]
    Device.model_validate(device_entry["resource"])
    assert device_entry["resource"]["identifier"] == [{"system": f"urn:oid:{OID}",
                                                       "value": "glucometer-0a1b2c"}]
    assert device_entry["resource"]["serialNumber"] == "GM-0042"
    assert device_entry["request"]["ifNoneExist"] == (
        f"identifier=urn:oid:{OID}|glucometer-0a1b2c")
    glucose = obs_entry["resource"]
    assert glucose["device"] == {"reference": device_entry["fullUrl"]}
    assert glucose["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "LA46-8"
    assert glucose["valueQuantity"]["code"] == "mg/dL"
    alone = by_kind[("Observation",)]["entry"][0]["resource"]
    assert "device" not in alone and alone["code"]["coding"][0]["code"] == "29463-7"


def _valid_ins(number: str = "1850775123456") -> str:
    return number + f"{97 - int(number) % 97:02d}"


async def test_the_patient_reads_the_feed_status_over_http(core, receiver) -> None:  # type: ignore[no-untyped-def]
    """Consent through PUT, then the record's 403 and 422 answers, each readable through
    GET /v1/me/record-feed in words a patient understands."""
    state, url, _ = receiver
    patient, _, _ = await new_patient(core, "reader")
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens))
    auth = {"Authorization": f"Bearer {tokens.issue(str(patient), methods=['pwd', 'otp'])}"}
    async with TestClient(TestServer(app)) as client, aiohttp.ClientSession() as session:
        resp = await client.get("/v1/me/record-feed", headers=auth)
        assert resp.status == 200
        assert await resp.json() == {"enabled": False, "pending": 0, "sent": 0, "refused": 0,
                                     "last_refusal": None}
        resp = await client.put("/v1/me/record-feed", headers=auth,
                                json={"enabled": True, "ins": "185077512345699"})
        assert resp.status == 422 and resp.content_type == "application/problem+json"
        resp = await client.put("/v1/me/record-feed", headers=auth,
                                json={"enabled": True, "ins": _valid_ins()})
        assert resp.status == 200 and (await resp.json())["enabled"] is True

        now = dt.datetime.now(dt.UTC)
        t = int(now.timestamp() * 1000) - 7_200_000
        sender = FeedSender(RecordFeed(core.pool, core.keyring), core.store, core.audit,
                            session, FeedConfig(url=url, sender_oid=OID, base_backoff_s=0.0))

        async def weigh(at_ms: int, seq: int) -> None:
            await core.store.ingest([MessageIn("scale-9", seq, now, [SegmentIn(
                patient, "body_weight", Samples(np.array([at_ms], np.int64),
                                                np.array([72.5]), np.zeros(1, np.uint8)))],
                0)])

        await weigh(t, 1)
        state.mode = "403"
        await sender.collect()
        assert await sender.send_due() == {"sent": 0, "refused": 1, "retry": 0}
        status = await (await client.get("/v1/me/record-feed", headers=auth)).json()
        assert (status["refused"], status["pending"]) == (1, 0)
        assert status["last_refusal"] == ("the medical record refused: consent not given: "
                                          "Consent not given")

        await weigh(t + 60_000, 2)
        state.mode = "422"
        await sender.collect()
        await sender.send_due()
        status = await (await client.get("/v1/me/record-feed", headers=auth)).json()
        assert status["refused"] == 2
        assert status["last_refusal"] == ("the medical record refused the reading as "
                                          "invalid: Observation.code: unknown code")
        # The feed's attempts are in the patient's access log, named for a person.
        log = await (await client.get("/v1/me/access-log", headers=auth)).json()
        feeds = [e for e in log["entries"] if e["action"] == "feed"]
        assert [(e["who"], e["outcome"]) for e in feeds] == [
            ("the feed to your medical record", "refused")] * 2
        resp = await client.get("/v1/me/access-log", params={"format": "fhir"}, headers=auth)
        bundle = await resp.json()
        Bundle.model_validate(bundle)
        for entry in bundle["entry"]:
            event = entry["resource"]
            AuditEvent.model_validate(event)
            assert event["action"] == "C" and event["outcome"] == "4"
            assert [(a["type"]["coding"][0]["code"], a["who"]["display"])
                    for a in event["agent"]] == [
                ("110153", "the feed to your medical record"), ("IRCP", "Mon espace santé")]
