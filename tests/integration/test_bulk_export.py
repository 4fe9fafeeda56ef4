"""A patient's export, FHIR Bulk Data style (issue 21): kick-off, status, one NDJSON file per
resource type streamed, deleted on request; only the patient's own job."""

from __future__ import annotations

import datetime as dt
import json

from storage.record_links import Person, RecordLinks, Tokens
from tests.integration import test_clinician_access
from tests.integration.test_clinician_access import World, _grant

world = test_clinician_access.world  # the same fixture, found by pytest under this name
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


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
    assert counts["Patient"] == 1 and counts["Observation"] == 240 + 10 and counts["Consent"] == 1
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
