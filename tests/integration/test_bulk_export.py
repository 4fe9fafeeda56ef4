"""A patient's export, FHIR Bulk Data style (issue 21): kick-off, status, one NDJSON file per
resource type streamed, deleted on request; only the patient's own job."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.observation import Observation

from storage.record_feed import RecordFeed
from storage.record_links import Person, RecordLinks, Tokens
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.integration import test_clinician_access
from tests.integration.test_clinician_access import DAY, World, _grant
from vitals import fhir
from vitals.normalise import Flag

world = test_clinician_access.world  # the same fixture, found by pytest under this name
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
INS_OID = "1.2.250.1.213.1.4.8"  # INS-NIR


async def test_kick_off_poll_fetch_ndjson_and_delete(world: World) -> None:
    await _grant(world)
    me = world.as_patient()
    resp = await world.client.get("/v1/me/$export", headers=me)
    assert resp.status == 400  # Bulk Data wants Prefer: respond-async
    resp = await world.client.get("/v1/me/$export", headers={**me, **ASYNC})
    assert resp.status == 202, await resp.text()
    status_url = resp.headers["Content-Location"]
    status_path = status_url[status_url.index("/v1/"):]
    resp = await world.client.get(status_path, headers=me)
    assert resp.status == 200
    manifest = await resp.json()
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    by_type = {o["type"]: o["url"] for o in manifest["output"]}
    assert {"Patient", "Device", "Observation", "Consent", "AuditEvent"} <= set(by_type)
    counts = {}
    for kind, url in by_type.items():
        resp = await world.client.get(url[url.index("/v1/"):], headers=me)
        assert resp.status == 200 and resp.content_type == "application/fhir+ndjson"
        lines = (await resp.text()).splitlines()
        assert all(json.loads(line)["resourceType"] == kind for line in lines)
        counts[kind] = len(lines)
    # The hourly heart rate as one series a UTC day, and ten weighings.
    days = {(world.now - 10 * DAY + dt.timedelta(hours=h)).date() for h in range(240)}
    assert counts["Patient"] == 1 and counts["Observation"] == len(days) + 10
    assert counts["Consent"] == 1
    other = await world.client.get(status_path, headers=world.as_clinician())
    assert other.status == 403
    assert (await world.client.delete(status_path, headers=me)).status == 202
    assert (await world.client.get(status_path, headers=me)).status == 404


async def test_the_patient_file_carries_the_national_identifier_of_the_record_link(
        world: World) -> None:
    await RecordLinks(world.core.pool, world.core.keyring).save(world.patient, Tokens(
        "at", None, dt.datetime.now(dt.UTC), Person("1.2.250.1.213.1.4.10", "IDPE0123")))
    me = world.as_patient()
    resp = await world.client.get("/v1/me/$export", headers={**me, **ASYNC})
    status_url = resp.headers["Content-Location"]
    resp = await world.client.get(status_url[status_url.index("/v1/"):] + "/Patient.ndjson",
                                  headers=me)
    patient = json.loads(await resp.text())
    assert {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "IDPE0123"} in patient[
        "identifier"]


async def _export(world: World) -> dict[str, list[dict[str, Any]]]:
    """Kick off, poll, and fetch every file of the manifest: resources by type."""
    me = world.as_patient()
    resp = await world.client.get("/v1/me/$export", headers={**me, **ASYNC})
    assert resp.status == 202, await resp.text()
    status_url = resp.headers["Content-Location"]
    resp = await world.client.get(status_url[status_url.index("/v1/"):], headers=me)
    assert resp.status == 200
    out: dict[str, list[dict[str, Any]]] = {}
    for item in (await resp.json())["output"]:
        resp = await world.client.get(item["url"][item["url"].index("/v1/"):], headers=me)
        assert resp.status == 200
        out[item["type"]] = [json.loads(line) for line in (await resp.text()).splitlines()]
    return out


async def test_rr_intervals_and_dense_series_are_one_observation_per_day(
        world: World) -> None:
    day0 = world.now.replace(hour=0, minute=0, second=0, microsecond=0) - 3 * DAY
    start = int(day0.timestamp() * 1000)
    rr_t, rr_v = [], []
    for run in range(2 * 288):  # two days of a minute of beats every five minutes
        at = start + run * 300_000
        for _ in range(70):
            interval = round(850 + 30 * np.sin(at / 4000), 1)
            at += round(interval)
            rr_t.append(at)
            rr_v.append(interval)
    seconds = start + np.arange(2 * 86_400, dtype=np.int64) * 1000
    await world.core.store.ingest([MessageIn("watch-rr", 7, world.now, [
        SegmentIn(world.patient, "rr_interval", Samples(
            np.array(rr_t, np.int64), np.array(rr_v), np.zeros(len(rr_t), np.uint8))),
        SegmentIn(world.patient, "heart_rate", Samples(
            seconds, np.full(len(seconds), 64.0), np.zeros(len(seconds), np.uint8)))], 0)])
    found = await _export(world)
    mine = [o for o in found["Observation"] if o.get("device") == {
        "reference": "Device/watch-rr"}]
    rr = [o for o in mine if o["code"] == {"text": "RR interval"}]
    assert len(rr) == 2 and len(mine) == 4  # a day of RR intervals, a day of heart rate
    for o in rr:
        Observation.model_validate(o)
        assert "vital-signs" not in json.dumps(o["category"]) and "meta" not in o
    beats = sorted(t for o in rr for t in fhir.rr_beat_times(o))
    assert beats == rr_t  # exactly
    assert sorted(v for o in rr for v in fhir.sampled_values(o["valueSampledData"])) == \
        sorted(rr_v)
    assert sum(len(json.dumps(o)) for o in rr) < 6 * len(rr_t)


async def test_the_export_is_complete(world: World) -> None:
    """Identity with the INS, both kinds of consent, the feed's history sent and refused,
    flagged samples with their flags, and every access event, not only reads."""
    core = world.core
    await RecordLinks(core.pool, core.keyring).save(world.patient, Tokens(
        "at", None, dt.datetime.now(dt.UTC), Person(INS_OID, "279035121518989")))
    feed = RecordFeed(core.pool, core.keyring)
    await feed.set_consent(world.patient, True)
    await feed.enqueue(world.patient, [(f"{world.patient}/body_weight/{ms}", "body_weight",
                                        {"resourceType": "Bundle"}) for ms in (1000, 2000)])
    entries = {e.identifier: e for e in await feed.claim_due(10)}
    await feed.mark_sent(entries[f"{world.patient}/body_weight/1000"].id, 201)
    await feed.mark_refused(entries[f"{world.patient}/body_weight/2000"].id, 422,
                            "the record refused the unit")
    spike = int((world.now - DAY).timestamp() * 1000)
    await core.store.ingest([MessageIn("watch-q", 1, world.now, [SegmentIn(
        world.patient, "heart_rate", Samples(np.array([spike - 1000, spike], np.int64),
                                             np.array([61.0, 190.0]),
                                             np.array([0, Flag.HR_SPIKE], np.uint8)))], 0)])
    await _grant(world)
    resp = await world.client.get(f"/fhir/Patient/{world.patient}",
                                  headers=world.as_clinician())
    assert resp.status == 200
    resp = await world.client.get("/v1/me/vitals/heart_rate", headers=world.as_patient())
    assert resp.status == 200

    found = await _export(world)
    patient = found["Patient"][0]
    assert {"system": f"urn:oid:{INS_OID}", "value": "279035121518989"} in patient[
        "identifier"]
    consents = found["Consent"]
    assert {c["id"] for c in consents} >= {"record-feed"} and len(consents) == 2
    for c in consents:
        Consent.model_validate(c)
    history = {c["status"]: c for c in found["Communication"]}
    assert set(history) == {"completed", "not-done"}
    assert "the record refused the unit" in history["not-done"]["statusReason"]["text"]
    for c in found["Communication"]:
        Communication.model_validate(c)
    flagged = [o for o in found["Observation"]
               if any(e["url"] == fhir.QUALITY_EXTENSION for e in o.get("extension", []))]
    assert len(flagged) == 1 and flagged[0]["valueQuantity"]["value"] == 190.0
    assert flagged[0]["status"] == "preliminary"
    assert {"url": fhir.QUALITY_EXTENSION, "valueCode": "hr-spike"} in flagged[0]["extension"]
    Observation.model_validate(flagged[0])
    logged = await core.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE patient_id = $1", world.patient)
    events = found["AuditEvent"]
    assert len(events) == logged  # the kick-off's own entry included
    kinds = {e["type"]["code"] for e in events}
    assert {"rest", "110110", "110106"} <= kinds  # reads, consent changes, the export
    for e in events:
        AuditEvent.model_validate(e)


async def test_every_audit_event_of_a_request_names_the_client_network_address(
        world: World) -> None:
    await _grant(world)
    resp = await world.client.get(f"/fhir/Observation?patient={world.patient}",
                                  headers=world.as_clinician())
    assert resp.status == 200
    rows = await world.core.pool.fetch(
        "SELECT action, client_address FROM audit_log WHERE patient_id = $1", world.patient)
    assert {r["action"] for r in rows} >= {"consent", "search"}
    assert all(r["client_address"] == "127.0.0.1" for r in rows)
    found = await _export(world)
    for event in found["AuditEvent"]:
        networks = [a["network"] for a in event["agent"]
                    if a.get("network", {}).get("type") == "2"]
        assert networks == [{"address": "127.0.0.1", "type": "2"}], event
    assert (await world.core.audit.verify_chain()).intact


async def test_a_job_past_its_expiry_is_gone_and_deleted_at_the_next_kick_off(
        world: World) -> None:
    """Nothing of an export rests readable: the job row holds no data (files are made as
    fetched), says until when it may be fetched, and is deleted once expired."""
    me = world.as_patient()
    resp = await world.client.get("/v1/me/$export", headers={**me, **ASYNC})
    status_url = resp.headers["Content-Location"]
    status_path = status_url[status_url.index("/v1/"):]
    resp = await world.client.get(status_path, headers=me)
    assert resp.status == 200 and "Expires" in resp.headers
    columns = {r["column_name"] for r in await world.core.pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'export_jobs'")}
    assert columns == {"id", "patient_id", "requested_at", "expires_at"}
    await world.core.pool.execute("UPDATE export_jobs SET expires_at = now()")
    assert (await world.client.get(status_path, headers=me)).status == 404
    assert (await world.client.get(status_path + "/Patient.ndjson", headers=me)).status == 404
    resp = await world.client.get("/v1/me/$export", headers={**me, **ASYNC})
    assert resp.status == 202
    assert await world.core.pool.fetchval("SELECT count(*) FROM export_jobs") == 1
