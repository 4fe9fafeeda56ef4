"""A patient's export as FHIR Bulk Data (issue 21): ``GET /v1/me/$export`` with
``Prefer: respond-async`` starts a job (202, its status URL in Content-Location); the
status URL answers the manifest (one NDJSON file per resource type); each file is streamed
as it is read, a day of samples at a time, so that a year never sits in memory; DELETE on
the status URL ends the job, and a job past its expiry is deleted at the next kick-off.
Files are generated when fetched, from the sealed segments: nothing readable rests on disk.
Only the patient's own job is found (403 for anyone else, 404 for an unknown or ended one).
The small synchronous Bundle (/v1/me/export) stays.

Complete: the patient (with the national identifier of their record link), their devices,
every sample (dense series and RR intervals as one SampledData Observation per UTC day and
source; a sample carrying a quality flag as a reading of its own with the flags), the
consents (each clinician share, and the feed to the medical record), the feed's history
(each reading sent, refused or pending, as a Communication) and every audit-log entry as
an AuditEvent. Everything is as of the job's transactionTime.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable
from email.utils import format_datetime
from typing import Any

import numpy as np
from aiohttp import web

from api.consent_routes import who_is
from api.fhir_routes import BP, DAY_MS, observations, source_tag
from api.problems import Problem
from api.requests import DEPS, bearer_claims, patient_of
from storage import device_refs
from storage.clinicians import Clinicians
from storage.consents import Consents
from storage.record_links import RecordLinks
from storage.segments import Samples
from vitals import fhir
from vitals.catalogue import METRICS
from vitals.normalise import DOUBTFUL, Flag

NDJSON = "application/fhir+ndjson"
JOB_LIFETIME = dt.timedelta(hours=24)  # the Bulk Data client fetches within a day
STEP = dt.timedelta(days=1)  # samples read and written a day at a time: bounded memory
TYPES = ("Patient", "Device", "Observation", "Consent", "Communication", "AuditEvent")
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
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="export",
                            resource=f"bulk/{job_id}", outcome="ok", client=request.remote)
    # The transaction time after the kick-off's own audit entry: the export holds it.
    now = dt.datetime.now(dt.UTC)
    await deps.pool.execute("DELETE FROM export_jobs WHERE expires_at <= $1", now)
    await deps.pool.execute(
        "INSERT INTO export_jobs (id, patient_id, requested_at, expires_at)"
        " VALUES ($1, $2, $3, $4)", job_id, patient_id, now, now + JOB_LIFETIME)
    return web.Response(status=202, headers={
        "Content-Location": f"{_base(request)}/v1/me/export-jobs/{job_id}"})


async def _job(request: web.Request) -> tuple[uuid.UUID, dt.datetime, dt.datetime]:
    """The caller's job named in the path: (patient, requested at, expires at); 404
    otherwise."""
    claims = bearer_claims(request, health_data=True)
    patient_id = patient_of(claims)
    try:
        job_id = uuid.UUID(request.match_info["job_id"])
    except ValueError:
        raise Problem(404, "no such export") from None
    row = await request.app[DEPS].pool.fetchrow(
        "SELECT requested_at, expires_at FROM export_jobs WHERE id = $1 AND patient_id = $2"
        " AND expires_at > now()", job_id, patient_id)
    if row is None:
        raise Problem(404, "no such export")
    return patient_id, row["requested_at"], row["expires_at"]


async def status(request: web.Request) -> web.Response:
    """Complete at once: the files are made as they are fetched."""
    _, requested_at, expires = await _job(request)
    here = f"{_base(request)}{request.path}"
    manifest = {
        "transactionTime": requested_at.isoformat(), "request": f"{_base(request)}/v1/me/$export",
        "requiresAccessToken": True, "error": [],
        "output": [{"type": kind, "url": f"{here}/{kind}.ndjson"} for kind in TYPES]}
    # Bulk Data: Expires says until when the files can be fetched.
    return web.json_response(manifest, headers={
        "Expires": format_datetime(expires, usegmt=True)})


async def delete(request: web.Request) -> web.Response:
    patient_id, _, _ = await _job(request)
    await request.app[DEPS].pool.execute(
        "DELETE FROM export_jobs WHERE id = $1 AND patient_id = $2",
        uuid.UUID(request.match_info["job_id"]), patient_id)
    return web.Response(status=202)


async def output(request: web.Request) -> web.StreamResponse:
    patient_id, requested_at, _ = await _job(request)
    kind = request.match_info["kind"].removesuffix(".ndjson")
    makers: dict[str, Callable[[web.Request, uuid.UUID, dt.datetime], Lines]] = {
        "Patient": _patients, "Device": _devices, "Observation": _observations,
        "Consent": _consents, "Communication": _feed_history,
        "AuditEvent": _audit_events}
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
                        until: dt.datetime) -> Lines:
    """Every sample up to ``until``, a UTC day at a time (bounded memory): series as one
    Observation per day and source, spot readings one by one, flagged samples apart."""
    deps = request.app[DEPS]
    span = await deps.pool.fetchrow(
        "SELECT min(start_at) AS lo, max(end_at) AS hi FROM segments WHERE patient_id = $1",
        patient_id)
    if span["lo"] is None:
        return
    day = span["lo"].replace(hour=0, minute=0, second=0, microsecond=0)
    end = min(span["hi"] + dt.timedelta(milliseconds=1), until)
    while day < end:
        by_device: dict[str, dict[str, Samples]] = {}
        for metric in METRICS:
            per_source = await deps.store.read_by_source(patient_id, metric, day,
                                                         min(day + STEP, end))
            for device_id, samples in per_source.items():
                if len(samples):
                    by_device.setdefault(device_id, {})[metric] = samples
        found: list[tuple[int, dict[str, Any]]] = []
        for device_id, series in sorted(by_device.items()):
            clean, apart = _set_apart(series)
            found += observations(patient_id, clean, device_id, DAY_MS)
            found += _one_by_one(patient_id, apart, device_id)
        found.sort(key=lambda pair: (pair[0], pair[1]["id"]))
        for _t, resource in found:
            yield resource
        del found, by_device
        day += STEP


def _set_apart(series: dict[str, Samples]) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """(samples without a flag, samples with one): a flagged sample is exported as a
    reading of its own that names its flags. A blood-pressure value without its pair at
    the same time (the other flagged, or missing) is set apart too: panels need both."""
    flagged = {m: s.flags != 0 for m, s in series.items()}
    if all(m in series for m in BP):
        sys_s, dia_s = series[BP[0]], series[BP[1]]
        both_clean = np.intersect1d(sys_s.t_ms[~flagged[BP[0]]], dia_s.t_ms[~flagged[BP[1]]])
        for m in BP:
            flagged[m] = ~np.isin(series[m].t_ms, both_clean)
    else:
        for m in BP:
            if m in series:
                flagged[m] = np.ones(len(series[m]), bool)
    clean, apart = {}, {}
    for m, s in series.items():
        keep = ~flagged[m]
        if keep.any():
            clean[m] = Samples(s.t_ms[keep], s.value[keep], s.flags[keep])
        if (~keep).any():
            apart[m] = Samples(s.t_ms[~keep], s.value[~keep], s.flags[~keep])
    return clean, apart


def _one_by_one(patient_id: uuid.UUID, apart: dict[str, Samples], device_id: str
                ) -> list[tuple[int, dict[str, Any]]]:
    out = []
    tag = source_tag(device_id)
    for metric, s in apart.items():
        index = list(METRICS).index(metric)
        for t, v, f in zip(s.t_ms.tolist(), s.value.tolist(), s.flags.tolist(), strict=True):
            obs = fhir.observation(f"q{index}-{patient_id.hex}-{t}-{tag}", metric,
                                   f"Patient/{patient_id}", t, v,
                                   device_ref=f"Device/{device_id}")
            names = [flag.name.lower().replace("_", "-") for flag in Flag
                     if flag and flag.name and f & flag]
            out.append((t, fhir.flagged(obs, names, bool(f & DOUBTFUL)) if names else obs))
    return out


async def _consents(request: web.Request, patient_id: uuid.UUID,
                    until: dt.datetime) -> Lines:
    """Each share with a clinician, and the consent to feed the medical record."""
    deps = request.app[DEPS]
    clinicians = Clinicians(deps.pool, deps.keyring)
    for c in await Consents(deps.pool).for_patient(patient_id):
        who = await clinicians.by_id(c.clinician_id)
        yield fhir.consent_resource(
            str(c.id), f"Patient/{patient_id}", c.active(until), _ms(c.granted_at),
            _ms(c.expires_at), _ms(c.data_from), _ms(c.data_to), who.rpps if who else None,
            c.metrics)
    feed = await deps.pool.fetchrow(
        "SELECT enabled, updated_at FROM record_feed_consents WHERE patient_id = $1",
        patient_id)
    if feed is not None:
        yield fhir.feed_consent_resource(f"Patient/{patient_id}", feed["enabled"],
                                         _ms(feed["updated_at"]))


FEED_PAGE = 5_000  # outbox rows read at a time: a year of daily readings is a few pages


async def _feed_history(request: web.Request, patient_id: uuid.UUID,
                        until: dt.datetime) -> Lines:
    """Every reading queued for the medical record: sent, refused (with the reason) or
    pending. Read by keyset pages: a long history never sits in memory whole."""
    pool = request.app[DEPS].pool
    after = 0
    while True:
        rows = await pool.fetch(
            """SELECT id, identifier, metric, state, last_status, last_error, sent_at,
                      created_at FROM record_feed_outbox
               WHERE patient_id = $1 AND id > $2 AND created_at <= $3 ORDER BY id LIMIT $4""",
            patient_id, after, until, FEED_PAGE)
        for r in rows:
            yield fhir.feed_communication(
                r["id"], f"Patient/{patient_id}", r["metric"],
                int(r["identifier"].rsplit("/", 1)[1]), r["state"], _ms(r["created_at"]),
                _ms(r["sent_at"]) if r["sent_at"] else None, r["last_status"],
                r["last_error"])
        if len(rows) < FEED_PAGE:
            return
        after = rows[-1]["id"]


AUDIT_PAGE = 5_000


async def _audit_events(request: web.Request, patient_id: uuid.UUID,
                        until: dt.datetime) -> Lines:
    """Every entry of the patient's audit log (reads, searches, the feed, exports,
    sign-ins, consents, devices...), oldest first, with the client's network address
    where the entry has one."""
    deps = request.app[DEPS]
    clinicians = Clinicians(deps.pool, deps.keyring)
    server = ("uri", f"{_base(request)}/fhir")
    names: dict[str, tuple[str, str | None]] = {}
    after = 0
    while True:
        trail = await deps.pool.fetch(
            "SELECT id, at, actor, action, resource, outcome, client_address FROM audit_log"
            " WHERE patient_id = $1 AND id > $2 AND at <= $3 ORDER BY id LIMIT $4",
            patient_id, after, until, AUDIT_PAGE)
        what = await device_refs.resolve(deps.pool, [row["resource"] for row in trail])
        for row, resource in zip(trail, what, strict=True):
            if row["actor"] not in names:
                names[row["actor"]] = await who_is(clinicians, row["actor"], patient_id)
            name, rpps = names[row["actor"]]
            client = ("ip", row["client_address"]) if row["client_address"] else None
            yield fhir.audit_event(f"audit-{row['id']}", _ms(row["at"]), row["action"],
                                   row["outcome"], name, f"Patient/{patient_id}", resource,
                                   rpps=rpps, server=server, client=client)
        if len(trail) < AUDIT_PAGE:
            return
        after = trail[-1]["id"]


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)

