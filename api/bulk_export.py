"""A patient's export as FHIR Bulk Data (issue 21): ``GET /v1/me/$export`` with
``Prefer: respond-async`` starts a job (202, its status URL in Content-Location); the
status URL answers the manifest (one NDJSON file per resource type); each file is streamed
as it is read, a day of samples at a time, so that a year never sits in memory; DELETE on
the status URL ends the job. Files are generated when fetched, from the sealed segments:
nothing readable rests on disk. Only the patient's own job is found (403 for anyone else,
404 for an unknown or ended one). The small synchronous Bundle (/v1/me/export) stays.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from api.consent_routes import who_is
from api.fhir_routes import observations
from api.problems import Problem
from api.requests import DEPS, bearer_claims, patient_of
from storage import device_refs
from storage.clinicians import Clinicians
from storage.consents import Consents
from storage.record_links import RecordLinks
from storage.segments import Samples
from vitals import fhir
from vitals.catalogue import METRICS

NDJSON = "application/fhir+ndjson"
JOB_LIFETIME = dt.timedelta(hours=24)  # the Bulk Data client fetches within a day
STEP = dt.timedelta(days=1)  # samples read and written a day at a time: bounded memory
TYPES = ("Patient", "Device", "Observation", "Consent", "AuditEvent")
Lines = AsyncIterator[dict[str, Any]]


def register(app: web.Application) -> None:
    app.router.add_get("/v1/me/$export", kick_off)
    app.router.add_get("/v1/me/export-jobs/{job_id}", status)
    app.router.add_delete("/v1/me/export-jobs/{job_id}", delete)
    app.router.add_get("/v1/me/export-jobs/{job_id}/{kind}", output)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def kick_off(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    if "respond-async" not in request.headers.get("Prefer", ""):
        raise Problem(400, "a Bulk Data kick-off needs the header Prefer: respond-async")
    job_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    await deps.pool.execute(
        "INSERT INTO export_jobs (id, patient_id, requested_at, expires_at)"
        " VALUES ($1, $2, $3, $4)", job_id, patient_id, now, now + JOB_LIFETIME)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                            action="export", resource=f"bulk/{job_id}", outcome="ok")
    return web.Response(status=202, headers={
        "Content-Location": f"{_base(request)}/v1/me/export-jobs/{job_id}"})


async def _job(request: web.Request) -> tuple[uuid.UUID, dt.datetime]:
    """The caller's job named in the path: (patient, requested at); 404 otherwise."""
    claims = bearer_claims(request, health_data=True)
    patient_id = patient_of(claims)
    try:
        job_id = uuid.UUID(request.match_info["job_id"])
    except ValueError:
        raise Problem(404, "no such export") from None
    row = await request.app[DEPS].pool.fetchrow(
        "SELECT requested_at FROM export_jobs WHERE id = $1 AND patient_id = $2"
        " AND expires_at > now()", job_id, patient_id)
    if row is None:
        raise Problem(404, "no such export")
    return patient_id, row["requested_at"]


async def status(request: web.Request) -> web.Response:
    """Complete at once: the files are made as they are fetched."""
    _, requested_at = await _job(request)
    here = f"{_base(request)}{request.path}"
    return web.json_response({
        "transactionTime": requested_at.isoformat(), "request": f"{_base(request)}/v1/me/$export",
        "requiresAccessToken": True, "error": [],
        "output": [{"type": kind, "url": f"{here}/{kind}.ndjson"} for kind in TYPES]})


async def delete(request: web.Request) -> web.Response:
    patient_id, _ = await _job(request)
    await request.app[DEPS].pool.execute(
        "DELETE FROM export_jobs WHERE id = $1 AND patient_id = $2",
        uuid.UUID(request.match_info["job_id"]), patient_id)
    return web.Response(status=202)


async def output(request: web.Request) -> web.StreamResponse:
    patient_id, requested_at = await _job(request)
    kind = request.match_info["kind"].removesuffix(".ndjson")
    makers: dict[str, Callable[[web.Request, uuid.UUID, dt.datetime], Lines]] = {
        "Patient": _patients, "Device": _devices, "Observation": _observations,
        "Consent": _consents, "AuditEvent": _audit_events}
    if kind not in makers or not request.match_info["kind"].endswith(".ndjson"):
        raise Problem(404, "no such file in this export")
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    async for resource in makers[kind](request, patient_id, requested_at):
        await response.write(json.dumps(resource, ensure_ascii=False).encode() + b"\n")
    await response.write_eof()
    return response


async def _patients(request: web.Request, patient_id: uuid.UUID, _: dt.datetime) -> Lines:
    """The patient, with the national identifier their medical-record link gave."""
    deps = request.app[DEPS]
    link = await RecordLinks(deps.pool, deps.keyring).get(patient_id)
    person = (link.tokens.person.system_oid, link.tokens.person.value) if link else None
    yield fhir.patient_resource(str(patient_id), person=person)


async def _devices(request: web.Request, patient_id: uuid.UUID, _: dt.datetime) -> Lines:
    for row in await request.app[DEPS].pool.fetch(
            "SELECT id, model, serial FROM devices WHERE patient_id = $1 ORDER BY id",
            patient_id):
        yield fhir.device_resource(row["id"], None, row["id"], row["model"], row["serial"],
                                   patient_ref=f"Patient/{patient_id}")


async def _observations(request: web.Request, patient_id: uuid.UUID,
                        _: dt.datetime) -> Lines:
    """Every sample, a day at a time (days are whole hours: a series stays whole)."""
    deps = request.app[DEPS]
    span = await deps.pool.fetchrow(
        "SELECT min(start_at) AS lo, max(end_at) AS hi FROM segments WHERE patient_id = $1",
        patient_id)
    if span["lo"] is None:
        return
    day = span["lo"].replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= span["hi"]:
        by_device: dict[str, dict[str, Samples]] = {}
        for metric in METRICS:
            per_source = await deps.store.read_by_source(patient_id, metric, day, day + STEP)
            for device_id, samples in per_source.items():
                if len(samples):
                    by_device.setdefault(device_id, {})[metric] = samples
        found = [pair for device_id, series in sorted(by_device.items())
                 for pair in observations(patient_id, series, device_id)]
        for _t, resource in sorted(found, key=lambda pair: (pair[0], pair[1]["id"])):
            yield resource
        day += STEP


async def _consents(request: web.Request, patient_id: uuid.UUID, _: dt.datetime) -> Lines:
    deps = request.app[DEPS]
    clinicians = Clinicians(deps.pool, deps.keyring)
    now = dt.datetime.now(dt.UTC)
    for c in await Consents(deps.pool).for_patient(patient_id):
        who = await clinicians.by_id(c.clinician_id)
        yield fhir.consent_resource(
            str(c.id), f"Patient/{patient_id}", c.active(now), _ms(c.granted_at),
            _ms(c.expires_at), _ms(c.data_from), _ms(c.data_to), who.rpps if who else None,
            c.metrics)


async def _audit_events(request: web.Request, patient_id: uuid.UUID,
                        _: dt.datetime) -> Lines:
    deps = request.app[DEPS]
    trail = await deps.audit.for_patient(patient_id, limit=100_000)
    what = await device_refs.resolve(deps.pool, [row["resource"] for row in trail])
    clinicians = Clinicians(deps.pool, deps.keyring)
    server = ("uri", f"{_base(request)}/fhir")
    names: dict[str, tuple[str, str | None]] = {}
    for row, resource in zip(trail, what, strict=True):
        if row["action"] not in fhir.AUDITED_AS_FHIR:
            continue
        if row["actor"] not in names:
            names[row["actor"]] = await who_is(clinicians, row["actor"], patient_id)
        name, rpps = names[row["actor"]]
        yield fhir.audit_event(f"audit-{row['id']}", _ms(row["at"]), row["action"],
                               row["outcome"], name, f"Patient/{patient_id}", resource,
                               rpps=rpps, server=server)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)

