"""Observation search as R4 says (issue 21): no hidden window, keyset paging that stays
stable while data arrives, ``_format``, ``_summary=count``, ``_count`` edge cases, ``_sort``,
``category``, partial dates, unknown parameters ignored unless ``Prefer: handling=strict``;
and the two common Python FHIR clients (fhirclient, fhirpy) doing their usual calls against
the live API."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import numpy as np
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.integration import test_clinician_access
from tests.integration.test_clinician_access import DAY, World, _grant
from tests.record_sim import profiles

world = test_clinician_access.world  # the same fixture, found by pytest under this name

JSON = "application/fhir+json"


async def _get(w: World, params: dict[str, Any] | list[tuple[str, str]],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    resp = await w.client.get("/fhir/Observation", params=params,
                              headers={**w.as_clinician(), **(headers or {})})
    assert resp.content_type == JSON, await resp.text()
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def _walk(w: World, params: dict[str, Any], between: Any = None) -> list[str]:
    """Every id the ``next`` links reach, calling ``between`` after each page."""
    resp = await w.client.get("/fhir/Observation", params=params, headers=w.as_clinician())
    ids: list[str] = []
    while True:
        page = await resp.json()
        assert resp.status == 200, page
        Bundle.model_validate(page)
        ids += [e["resource"]["id"] for e in page.get("entry", [])]
        nxt = next((link["url"] for link in page.get("link", [])
                    if link["relation"] == "next"), None)
        if nxt is None:
            return ids
        if between is not None:
            await between()
        resp = await w.client.get(nxt[nxt.index("/fhir"):], headers=w.as_clinician())


async def test_without_a_date_every_granted_observation_is_reached(world: World) -> None:
    # Ten daily weighings, the oldest ten days ago: a hidden 7-day window lost three.
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    ids = await _walk(world, {"patient": str(world.patient), "_count": "3"})
    assert len(ids) == len(set(ids)) == 10


async def test_keyset_paging_has_no_duplicate_and_no_gap_while_data_arrives(
        world: World) -> None:
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat(),
                 data_to=(world.now + 2 * DAY).isoformat())
    seq = iter(range(100, 200))

    async def a_new_weighing() -> None:  # newer than everything paged so far
        t = int(dt.datetime.now(dt.UTC).timestamp() * 1000) + next(seq)
        await world.core.store.ingest([MessageIn("scale-y", next(seq), world.now, [
            SegmentIn(world.patient, "body_weight", Samples(
                np.array([t], np.int64), np.array([70.0]), np.zeros(1, np.uint8)))], 0)])

    ids = await _walk(world, {"patient": str(world.patient), "_count": "2"}, a_new_weighing)
    assert len(ids) == len(set(ids)), "a page repeated an Observation"
    assert len(ids) >= 10  # the ten seeded ones, none skipped
    # Oldest first as well: arrivals land after the cursor and are reached, never twice.
    asc = await _walk(world, {"patient": str(world.patient), "_count": "2", "_sort": "date"},
                      a_new_weighing)
    assert len(asc) == len(set(asc)) and len(asc) >= 15


async def test_sort_by_date_both_ways(world: World) -> None:
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    times = {}
    for order in ("date", "-date"):
        status, page = await _get(world, {"patient": str(world.patient), "_sort": order})
        assert status == 200, page
        times[order] = [e["resource"]["effectiveDateTime"] for e in page["entry"]]
    assert times["date"] == sorted(times["date"]) and len(times["date"]) == 10
    assert times["-date"] == times["date"][::-1]
    status, page = await _get(world, {"patient": str(world.patient), "_sort": "value"})
    assert status == 400
    OperationOutcome.model_validate(page)


async def test_summary_count_and_count_zero_give_the_total_only(world: World) -> None:
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    for extra in ({"_summary": "count"}, {"_count": "0"}):
        status, page = await _get(world, {"patient": str(world.patient), **extra})
        assert status == 200, page
        Bundle.model_validate(page)
        assert page["total"] == 10 and not page.get("entry"), extra
    status, page = await _get(world, {"patient": str(world.patient), "_count": "-1"})
    assert status == 400
    status, page = await _get(world, {"patient": str(world.patient), "_count": "100000"})
    assert status == 200 and len(page["entry"]) == 10  # capped at the maximum, not refused


async def test_format_json_is_accepted_and_xml_is_not_acceptable(world: World) -> None:
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    for fmt in ("json", "application/fhir+json", "application/json"):
        status, page = await _get(world, {"patient": str(world.patient), "_format": fmt})
        assert status == 200 and page["resourceType"] == "Bundle", fmt
    status, page = await _get(world, {"patient": str(world.patient), "_format": "xml"})
    assert status == 406
    OperationOutcome.model_validate(page)


async def test_category_filters(world: World) -> None:
    await _grant(world, metrics=["body_weight", "heart_rate"],
                 data_from=(world.now - 11 * DAY).isoformat())
    sys = "http://terminology.hl7.org/CodeSystem/observation-category"
    status, page = await _get(world, {"patient": str(world.patient), "_summary": "count",
                                      "category": f"{sys}|vital-signs"})
    assert status == 200 and page["total"] == 10 + 240, page
    status, page = await _get(world, {"patient": str(world.patient), "_summary": "count",
                                      "category": "laboratory"})
    assert status == 200 and page["total"] == 0


async def test_partial_dates_are_periods(world: World) -> None:
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    year, month = world.now.strftime("%Y"), world.now.strftime("%Y-%m")
    for value in (year, month, f"ge{year}", f"le{world.now.year + 1}"):
        status, page = await _get(world, {"patient": str(world.patient), "date": value})
        assert status == 200, (value, page)
    # The year before the first weighing's (ten days ago: last year's, early in January).
    before = (world.now - 11 * DAY).year - 1
    status, page = await _get(world, {"patient": str(world.patient), "_summary": "count",
                                      "date": str(before)})
    assert status == 200 and page["total"] == 0


async def test_unknown_parameters_are_ignored_unless_strict(world: World) -> None:
    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    status, page = await _get(world, {"patient": str(world.patient), "_elements": "id",
                                      "whatever": "1"})
    assert status == 200 and len(page["entry"]) == 10, page
    status, page = await _get(world, {"patient": str(world.patient), "whatever": "1"},
                              headers={"Prefer": "handling=strict"})
    assert status == 400
    OperationOutcome.model_validate(page)
    status, page = await _get(world, {"patient": str(world.patient), "date": "2026-13"})
    assert status == 400
    OperationOutcome.model_validate(page)


async def test_fhirpy_and_fhirclient_search_count_page_and_read(world: World) -> None:
    from fhirclient import client as fhirclient_client
    from fhirclient.models.observation import Observation as FcObservation
    from fhirpy import AsyncFHIRClient

    await _grant(world, metrics=["body_weight"], data_from=(world.now - 11 * DAY).isoformat())
    base = str(world.client.make_url("/fhir"))
    auth = f"Bearer {world.clinician_token}"
    fp = AsyncFHIRClient(base, authorization=auth)
    search = fp.resources("Observation").search(patient=str(world.patient))
    assert await search.count() == 10
    fetched = await search.limit(3).fetch_all()
    assert len({o["id"] for o in fetched}) == 10
    first = await search.limit(1).first()
    assert first is not None
    again = await fp.reference("Observation", first["id"]).to_resource()
    assert again.serialize() == first.serialize()

    def with_fhirclient() -> list[str]:
        smart = fhirclient_client.FHIRClient(settings={"app_id": "test", "api_base": base})
        smart.server.session.headers["Authorization"] = auth
        found = FcObservation.where(struct={"patient": str(world.patient), "_count": "4"})
        ids = [str(r.id) for r in found.perform_resources_iter(smart.server)]
        FcObservation.read(ids[0], smart.server)
        return ids

    ids = await asyncio.to_thread(with_fhirclient)
    assert len(ids) == len(set(ids)) == 10


async def _dense_hour(w: World) -> int:
    """An hour of 1 Hz heart rate from the watch, two hours ago; its start in ms."""
    hour = (int(w.now.timestamp()) // 3600 - 2) * 3_600_000
    t = hour + np.arange(3600, dtype=np.int64) * 1000
    await w.core.store.ingest([MessageIn("watch-x", 50, w.now, [
        SegmentIn(w.patient, "heart_rate", Samples(t, 60 + (np.arange(3600) % 7.0),
                                                   np.zeros(3600, np.uint8)))], 0)])
    return hour


async def test_every_linked_resource_reads_by_id_at_its_absolute_full_url(world: World) -> None:
    await world.core.pool.execute(
        "INSERT INTO devices (id, model, serial, patient_id, state)"
        " VALUES ('watch-x', 'watch', 'W-0007', $1, 'paired')", world.patient)
    await _grant(world, metrics=["body_weight", "heart_rate"],
                 data_from=(world.now - 11 * DAY).isoformat())
    status, page = await _get(world, {"patient": str(world.patient), "_count": "200"})
    assert status == 200
    links: set[str] = set()
    assert all(e["fullUrl"].startswith("http://") and e["fullUrl"].endswith(
        f"/fhir/Observation/{e['resource']['id']}") for e in page["entry"])
    weights = [e for e in page["entry"] if "valueQuantity" in e["resource"]]
    series = [e for e in page["entry"] if "valueSampledData" in e["resource"]]
    for entry in weights[:2] + series[:2]:  # a few of each: the rate limit is on
        resource = entry["resource"]
        resp = await world.client.get(entry["fullUrl"][entry["fullUrl"].index("/fhir"):],
                                      headers=world.as_clinician())
        assert resp.status == 200, await resp.text()
        assert await resp.json() == resource
        links |= {resource["subject"]["reference"], resource["device"]["reference"]}
    for ref in links:
        resp = await world.client.get(f"/fhir/{ref}", headers=world.as_clinician())
        assert resp.status == 200, ref
        linked = await resp.json()
        if linked["resourceType"] == "Device":  # a PHD claim only with what PHD requires
            assert "meta" not in linked or not profiles.check_device(linked)
    resp = await world.client.get("/fhir/Observation/not-one-of-ours",
                                  headers=world.as_clinician())
    assert resp.status == 404 and resp.content_type == JSON
    OperationOutcome.model_validate(await resp.json())


async def test_a_date_search_never_truncates_an_observation(world: World) -> None:
    hour = await _dense_hour(world)
    await _grant(world, metrics=["heart_rate"])
    quarter = dt.datetime.fromtimestamp((hour + 2_700_000) / 1000, dt.UTC).isoformat()
    status, page = await _get(world, {"patient": str(world.patient), "date": f"ge{quarter}",
                                      "_sort": "date"})
    assert status == 200
    dense = page["entry"][0]["resource"]
    assert dense["valueSampledData"]["data"].count(" ") == 3599  # the whole hour
    resp = await world.client.get(f"/fhir/Observation/{dense['id']}",
                                  headers=world.as_clinician())
    assert await resp.json() == dense


async def test_the_export_and_the_access_log_name_the_clinician_as_balp_wants(
        world: World) -> None:
    """Seen: the export named the actor ``clinician:<uuid>``; agents had no network."""
    await _grant(world, metrics=["body_weight"])
    await _get(world, {"patient": str(world.patient)})
    await world.client.get(f"/fhir/Patient/{world.patient}", headers=world.as_clinician())
    await world.client.get("/v1/me/export", headers=world.as_patient())  # audited too
    for route in ("/v1/me/export", "/v1/me/access-log?format=fhir"):
        resp = await world.client.get(route, headers=world.as_patient())
        events = [e["resource"] for e in (await resp.json())["entry"]
                  if e["resource"]["resourceType"] == "AuditEvent"]
        kinds = {e["type"]["code"] for e in events}
        assert {"rest", "110106"} <= kinds, route
        for event in events:
            if event["type"]["code"] != "rest":
                continue
            users = [a for a in event["agent"] if a["type"]["coding"][0]["code"] == "IRCP"]
            assert users[0]["who"]["display"] == "Dr Martin (physician)", route
            assert users[0]["who"]["identifier"]["value"] == "8" + world.rpps
            assert any(a.get("network", {}).get("address", "").endswith("/fhir")
                       for a in event["agent"])
