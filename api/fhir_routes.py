"""The FHIR R4 read API for clinicians: metadata, Patient, Device and Observation search.

Dense streams (heart rate, SpO2, steps, skin temperature) are one Observation per UTC hour
with SampledData; blood pressure readings are panels; anything else (a weighing, a
thermometer's temperature, an RR interval) is one Observation per reading. Sources stay
apart: each Observation references the device that measured it. Only what the patient
shared is ever found; samples carrying a quality flag wait for review and are not served.
Errors are OperationOutcome resources, as FHIR clients expect.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import numpy as np
from aiohttp import web

from api.access import NO_CONSENT, clinician_access
from api.problems import Problem
from api.requests import DEPS, EARLIEST, LATEST, bearer_claims, int_param
from storage.consents import Access
from storage.device_info import device_info
from storage.segments import Samples
from vitals import fhir
from vitals.catalogue import METRICS
from vitals.normalise import reliable

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT, MAX_COUNT = 50, 200
DEFAULT_RANGE = dt.timedelta(days=7)
MAX_RANGE = dt.timedelta(days=92)
HOUR_MS = 3_600_000
# Dense metrics: the SampledData grid of each; steps are summed per minute first.
SAMPLED_PERIOD_MS = {"heart_rate": 1000, "spo2": 1000, "steps": 60_000,
                     "skin_temperature": 60_000}
BP = ("systolic_bp", "diastolic_bp")
_ID_NAMESPACE = uuid.UUID("0f3a6d2e-77c4-4b1a-9a51-3d1f4c2b8e90")
_SEARCH_PARAMS = {"patient", "code", "date", "_count", "_page"}
_BY_LOINC = {m.loinc: m.name for m in METRICS.values() if m.loinc}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def register(app: web.Application) -> None:
    app.router.add_get("/fhir/metadata", metadata)
    app.router.add_get("/fhir/Patient/{patient_id}", read_patient)
    app.router.add_get("/fhir/Device/{device_id}", read_device)
    app.router.add_get("/fhir/Observation", search_observations)


def _resource(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, content_type=FHIR_JSON)


def outcome(status: int, text: str) -> web.Response:
    """An OperationOutcome: how the FHIR API answers an error."""
    code = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found"}.get(
        status, "exception")
    return _resource({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": text}]}, status)


def fhir_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Problem as exc:
            return outcome(exc.status, exc.detail)
    return wrapped


async def metadata(request: web.Request) -> web.Response:
    base = f"{request.scheme}://{request.host}/fhir"
    return _resource(fhir.capability_statement(base, "0.1.0"))


def _patient_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw.removeprefix("Patient/"))
    except ValueError:
        raise Problem(403, "this patient has not given you access") from None


@fhir_errors
async def read_patient(request: web.Request) -> web.Response:
    patient_id = _patient_id(request.match_info["patient_id"])
    await clinician_access(request, patient_id, action="read", resource="fhir/Patient")
    return _resource({"resourceType": "Patient", "id": str(patient_id), "active": True})


@fhir_errors
async def read_device(request: web.Request) -> web.Response:
    """A device that measured a patient's Observations (their ``device`` reference), for a
    clinician the patient shares with. A device unknown or of a patient who does not share
    with the caller answers the same 403, so device ids cannot be probed."""
    device_id = request.match_info["device_id"]
    found = (await device_info(request.app[DEPS].pool, [device_id])).get(device_id)
    if found is None or found.patient_id is None:
        bearer_claims(request, health_data=True)  # 401 before 403, as on every route
        raise Problem(403, NO_CONSENT)
    await clinician_access(request, found.patient_id, action="read",
                           resource=f"fhir/Device/{device_id}")
    return _resource(fhir.device_resource(device_id, None, device_id, found.model,
                                          found.serial,
                                          patient_ref=f"Patient/{found.patient_id}"))


def _instant(raw: str) -> dt.datetime:
    """A FHIR date or dateTime (UTC without an offset) within the instants the API
    accepts; ValueError otherwise."""
    value = dt.datetime.fromisoformat(raw)
    try:
        value = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("out of range") from None
    if not EARLIEST <= value < LATEST:
        raise ValueError("out of range")
    return value


def _date_range(values: list[str]) -> tuple[dt.datetime, dt.datetime]:
    """``date`` parameters with ge/gt/le/lt prefixes (or none: that day or instant)."""
    now = dt.datetime.now(dt.UTC)
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    for raw in values:
        prefix, body = (raw[:2], raw[2:]) if raw[:2] in ("ge", "gt", "le", "lt", "eq") \
            else ("eq", raw)
        try:
            moment = _instant(body)
        except ValueError:
            raise Problem(400, f"date {raw!r} is not a FHIR date or dateTime") from None
        day_only = len(body) == 10
        if prefix in ("ge", "gt", "eq"):
            start = moment + (dt.timedelta(days=1) if prefix == "gt" and day_only else
                              dt.timedelta(milliseconds=1 if prefix == "gt" else 0))
        if prefix in ("le", "lt", "eq"):
            end = moment + (dt.timedelta(days=1) if day_only and prefix != "lt" else
                            dt.timedelta(milliseconds=1 if prefix == "le" else 0))
    end = end or now
    start = start or end - DEFAULT_RANGE
    if not start < end <= start + MAX_RANGE:
        raise Problem(400, f"the date range must be non-empty and at most {MAX_RANGE.days} days")
    return start, end


def _metrics(code: str | None, access: Access) -> list[str]:
    """The shared metrics a ``code`` parameter asks for (all shared ones without it)."""
    if code is None:
        return sorted(access.windows)
    wanted: set[str] = set()
    for token in code.split(","):
        system, _, value = token.rpartition("|")
        if system not in ("", fhir.LOINC):
            continue
        if value == fhir.BP_PANEL_LOINC:
            wanted.update(BP)
        elif value in _BY_LOINC:
            wanted.add(_BY_LOINC[value])
    return sorted(wanted & access.windows.keys())


@fhir_errors
async def search_observations(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - _SEARCH_PARAMS)
    if unknown:
        raise Problem(400, f"unsupported search parameters: {', '.join(unknown)}")
    if "patient" not in request.query:
        raise Problem(400, "the patient parameter is required")
    patient_id = _patient_id(request.query["patient"])
    start, end = _date_range(request.query.getall("date", []))
    count = int_param(request, "_count", DEFAULT_COUNT, MAX_COUNT)
    page = int_param(request, "_page", 1, 10_000)
    what = "fhir/Observation?" + urlencode(
        [(k, v) for k, v in request.query.items() if k in ("code", "date")])
    _, access = await clinician_access(request, patient_id, action="search", resource=what)
    by_source: dict[str, dict[str, Samples]] = {}
    for metric in _metrics(request.query.get("code"), access):
        for device_id, samples in (await _granted_by_source(
                request, access, patient_id, metric, start, end)).items():
            by_source.setdefault(device_id, {})[metric] = _clean(samples)
    found = [stub for device_id, series in sorted(by_source.items())
             for stub in _stubs(patient_id, series, device_id)]
    found.sort(key=lambda stub: (-stub.t, stub.id))  # newest first, stable
    # Only the requested page is built: a week of 1 Hz heart rate is 168 SampledData
    # resources of 3600 values each, and a client paging by 10 needs ten of them.
    chosen = [stub.build() for stub in found[(page - 1) * count: page * count]]
    links = [("self", _page_url(request, page))]
    if page * count < len(found):
        links.append(("next", _page_url(request, page + 1)))
    return _resource(fhir.bundle("searchset", chosen, total=len(found), links=links))


async def _granted_by_source(request: web.Request, access: Access, patient_id: uuid.UUID,
                             metric: str, start: dt.datetime, end: dt.datetime
                             ) -> dict[str, Samples]:
    """The samples of ``metric`` in [start, end) that the access covers, per source
    device: each Observation names the device that measured it."""
    store = request.app[DEPS].store
    parts: dict[str, list[Samples]] = {}
    for a, b in access.clip(metric, start, end):  # sorted and disjoint
        for device_id, samples in (await store.read_by_source(patient_id, metric, a,
                                                               b)).items():
            parts.setdefault(device_id, []).append(samples)
    return {d: Samples(np.concatenate([p.t_ms for p in ps]),
                       np.concatenate([p.value for p in ps]),
                       np.concatenate([p.flags for p in ps]))
            for d, ps in parts.items()}


def _page_url(request: web.Request, page: int) -> str:
    query = [(k, v) for k, v in request.query.items() if k != "_page"] + [("_page", str(page))]
    return f"{request.scheme}://{request.host}{request.path}?{urlencode(query)}"


def _clean(samples: Samples) -> Samples:
    keep = reliable(samples.flags)
    return Samples(samples.t_ms[keep], samples.value[keep], samples.flags[keep])


def _oid(patient_id: uuid.UUID, key: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{patient_id}/{key}"))


@dataclass(frozen=True, slots=True)
class _Stub:
    """An Observation not built yet: its time and id, enough to sort and page."""

    t: int
    id: str
    build: Callable[[], dict[str, Any]]


def observations(patient_id: uuid.UUID, series: Mapping[str, Samples],
                 device_id: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(effective time, Observation) for every shared sample of one source: spot readings
    one by one, blood pressure as panels, dense streams per hour as SampledData. With
    ``device_id`` each Observation references the device and its id includes it."""
    return [(stub.t, stub.build()) for stub in _stubs(patient_id, series, device_id)]


def _stubs(patient_id: uuid.UUID, series: Mapping[str, Samples], device_id: str | None
           ) -> list[_Stub]:
    subject = f"Patient/{patient_id}"
    device_ref = f"Device/{device_id}" if device_id else None
    source = f"{device_id}/" if device_id else ""  # ids stay unique across sources
    out: list[_Stub] = []
    for metric, samples in series.items():
        if metric not in SAMPLED_PERIOD_MS and metric not in BP:
            for t, v in zip(samples.t_ms.tolist(), samples.value.tolist(), strict=True):
                oid = _oid(patient_id, f"{metric}/{source}{t}")
                out.append(_Stub(t, oid, functools.partial(
                    fhir.observation, oid, metric, subject, t, v, device_ref=device_ref)))
        elif metric in SAMPLED_PERIOD_MS:
            out += _hourly(patient_id, metric, samples, device_ref, source)
    if all(m in series for m in BP):
        sys_s, dia_s = series[BP[0]], series[BP[1]]
        common, i, j = np.intersect1d(sys_s.t_ms, dia_s.t_ms, return_indices=True)
        for k, t in enumerate(common.tolist()):
            oid = _oid(patient_id, f"blood_pressure/{source}{t}")
            out.append(_Stub(t, oid, functools.partial(
                fhir.blood_pressure, oid, subject, t, float(sys_s.value[i[k]]),
                float(dia_s.value[j[k]]), device_ref=device_ref)))
    return out


def _hourly(patient_id: uuid.UUID, metric: str, samples: Samples, device_ref: str | None,
            source: str) -> list[_Stub]:
    period = SAMPLED_PERIOD_MS[metric]
    t, v = samples.t_ms, samples.value
    if metric == "steps" and len(t):  # counts add up within a grid slot
        slots, inverse = np.unique(t // period, return_inverse=True)
        t = (slots * period).astype(np.int64)
        v = np.bincount(inverse, weights=v).astype(np.float64)
    out = []
    hours, first = np.unique(t // HOUR_MS, return_index=True)
    bounds = [*first[1:], len(t)]
    for hour, a, b in zip(hours.tolist(), first.tolist(), bounds, strict=True):
        oid = _oid(patient_id, f"{metric}/{source}h{hour}")
        out.append(_Stub(hour * HOUR_MS, oid, functools.partial(
            fhir.sampled, oid, metric, f"Patient/{patient_id}", t[a:b], v[a:b], period,
            device_ref=device_ref)))
    return out
