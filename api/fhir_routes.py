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
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import numpy as np
from aiohttp import web

from api.access import NO_CONSENT, clinician_access
from api.problems import Problem
from api.requests import DEPS, EARLIEST, LATEST, bearer_claims
from storage.consents import Access
from storage.device_info import device_info
from storage.extent import data_extent
from storage.record_links import RecordLinks
from storage.segments import Samples
from vitals import fhir
from vitals.catalogue import METRICS
from vitals.normalise import reliable

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT, MAX_COUNT = 50, 200
# A search scans the timeline in windows: one day first (a page of 50 hourly series needs
# about two), doubled while empty up to a month, so sparse data costs few queries and dense
# data never loads more than a month of one patient at once.
FIRST_WINDOW = dt.timedelta(days=1)
MAX_WINDOW = dt.timedelta(days=32)
_CURSOR = re.compile(r"(-?\d{1,16})\.([0-9a-z-]{1,64})")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
HOUR_MS = 3_600_000
# Dense metrics: the SampledData grid of each; steps and sleep minutes are summed per
# minute first. SpO2 from a watch is one reading a minute: a 1-second grid would be 98% "E".
SAMPLED_PERIOD_MS = {"heart_rate": 1000, "spo2": 60_000, "steps": 60_000,
                     "skin_temperature": 60_000, "sleep_duration": 60_000}
ADDITIVE = frozenset({"steps", "sleep_duration"})  # counts that add up within a grid slot
# Metrics served as one Observation per period (an hour here, a day in the export): the
# dense ones, and RR intervals (one a beat) as a series in beat order.
SERIES = frozenset({*SAMPLED_PERIOD_MS, "rr_interval"})
DAY_MS = 86_400_000
BP = ("systolic_bp", "diastolic_bp")
_BY_LOINC = {m.loinc: m.name for m in METRICS.values() if m.loinc}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def register(app: web.Application) -> None:
    app.router.add_get("/fhir/metadata", metadata)
    app.router.add_get("/fhir/Patient/{patient_id}", read_patient)
    app.router.add_get("/fhir/Device/{device_id}", read_device)
    app.router.add_get("/fhir/Observation", search_observations)
    app.router.add_get("/fhir/Observation/{observation_id}", read_observation)


def _resource(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, content_type=FHIR_JSON)


def outcome(status: int, text: str) -> web.Response:
    """An OperationOutcome: how the FHIR API answers an error."""
    code = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
            406: "not-supported"}.get(
        status, "exception")
    return _resource({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": text}]}, status)


# ``_format`` (defined for every interaction): the JSON forms R4 names; XML is not served.
JSON_FORMATS = ("json", "application/json", "application/fhir+json")


def fhir_errors(handler: Handler) -> Handler:
    """Problems as OperationOutcomes, and ``_format`` honoured (406 for XML or anything
    else than JSON), on every FHIR interaction."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        fmt = request.query.get("_format")
        if fmt is not None and fmt not in JSON_FORMATS:
            return outcome(406, f"_format {fmt!r}: only JSON is served here")
        try:
            return await handler(request)
        except Problem as exc:
            return outcome(exc.status, exc.detail)
    return wrapped


@fhir_errors
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
    deps = request.app[DEPS]
    link = await RecordLinks(deps.pool, deps.keyring).get(patient_id)
    person = (link.tokens.person.system_oid, link.tokens.person.value) if link else None
    return _resource(fhir.patient_resource(str(patient_id), person=person))


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
    device = fhir.device_resource(device_id, None, device_id, found.model, found.serial,
                                  patient_ref=f"Patient/{found.patient_id}")
    # Without its PHD facts (system id, manufacturer, model number, specialisation) the
    # Device does not meet PhdDevice: it claims no profile here.
    device.pop("meta", None)
    return _resource(device)


_PARTIAL = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_PREFIXES = ("eq", "ge", "gt", "le", "lt")


def _period(raw: str) -> tuple[dt.datetime, dt.datetime]:
    """The period a FHIR date search value stands for: a year, a month, a day, or an
    instant (to the precision given); ValueError for anything else or out of range."""
    whole = _PARTIAL.fullmatch(raw)
    if whole:
        year, month, day = int(whole[1]), int(whole[2] or 1), int(whole[3] or 1)
        lo = dt.datetime(year, month, day, tzinfo=dt.UTC)
        if whole[3]:
            hi = lo + dt.timedelta(days=1)
        elif whole[2]:
            hi = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
        else:
            hi = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    else:
        if "T" not in raw:
            raise ValueError("not a FHIR date")
        lo = dt.datetime.fromisoformat(raw)
        try:
            lo = (lo if lo.tzinfo else lo.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        except OverflowError:
            raise ValueError("out of range") from None
        precision = {16: dt.timedelta(minutes=1), 19: dt.timedelta(seconds=1)}
        hi = lo + precision.get(len(raw.split("+")[0].rstrip("Z")), dt.timedelta(
            milliseconds=1))
    if not (EARLIEST <= lo and hi <= LATEST):
        raise ValueError("out of range")
    return lo, hi


def _date_range(values: list[str]) -> tuple[dt.datetime, dt.datetime]:
    """``date`` parameters (with eq, ge, gt, le or lt, or none) as one range [start, end)
    that an Observation's effective time must overlap; all of time without any."""
    start, end = EARLIEST, LATEST
    for raw in values:
        prefix, body = (raw[:2], raw[2:]) if raw[:2] in _PREFIXES else ("eq", raw)
        try:
            lo, hi = _period(body)
        except ValueError:
            raise Problem(400, f"date {raw!r} is not a FHIR date or dateTime") from None
        if prefix in ("eq", "ge"):
            start = max(start, lo)
        if prefix == "gt":
            start = max(start, hi)
        if prefix in ("eq", "le"):
            end = min(end, hi)
        if prefix == "lt":
            end = min(end, lo)
    return start, end


def _metrics(code: str | None, categories: list[str], access: Access) -> list[str]:
    """The shared metrics ``code`` and ``category`` ask for (all shared ones without)."""
    wanted = set(access.windows)
    if code is not None:
        coded: set[str] = set()
        for token in code.split(","):
            system, _, value = token.rpartition("|")
            if system not in ("", fhir.LOINC):
                continue
            if value == fhir.BP_PANEL_LOINC:
                coded.update(BP)
            elif value in _BY_LOINC:
                coded.add(_BY_LOINC[value])
        wanted &= coded
    for category in categories:  # each parameter ANDs, commas within one OR
        codes = set()
        for token in category.split(","):
            system, _, value = token.rpartition("|")
            if system in ("", fhir.OBSERVATION_CATEGORY):
                codes.add(value)
        wanted = {m for m in wanted
                  if fhir.category_code("blood_pressure" if m in BP else m) in codes}
    return sorted(wanted)


def _count(request: web.Request) -> int:
    """``_count``: 0 (the total only) up to any number, served as at most MAX_COUNT."""
    raw = request.query.get("_count")
    if raw is None:
        return DEFAULT_COUNT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise Problem(400, "_count must be a whole number, 0 or more")
    return min(int(raw), MAX_COUNT)


def _cursor(request: web.Request) -> tuple[int, str] | None:
    raw = request.query.get("_cursor")
    if raw is None:
        return None
    found = _CURSOR.fullmatch(raw)
    if not found:
        raise Problem(400, "_cursor is not one of ours: follow the Bundle's next link")
    return int(found[1]), found[2]


def _choice(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in allowed:
        raise Problem(400, f"{name} must be one of {', '.join(allowed)}")
    return value


@fhir_errors
async def search_observations(request: web.Request) -> web.Response:
    """Observations of one patient, only what they share, ordered by date (newest first
    unless ``_sort=date``) and paged by keyset: a ``next`` link carries the (time, id) of
    the last entry, so data arriving between pages neither repeats nor hides any."""
    if "patient" not in request.query:
        raise Problem(400, "the patient parameter is required")
    patient_id = _patient_id(request.query["patient"])
    start, end = _date_range(request.query.getall("date", []))
    count = _count(request)
    descending = _choice(request, "_sort", ("-date", "date"), "-date") == "-date"
    summary = _choice(request, "_summary", ("false", "count"), "false")
    total_wanted = _choice(request, "_total", ("none", "estimate", "accurate"), "none")
    cursor = _cursor(request)
    what = "fhir/Observation?" + urlencode(
        [(k, v) for k, v in request.query.items() if k in ("code", "date", "category")])
    _, access = await clinician_access(request, patient_id, action="search", resource=what)
    metrics = _metrics(request.query.get("code"), request.query.getall("category", []),
                       access)
    scan = _Scan(request, access, patient_id, metrics, start, end, descending)
    if summary == "count" or count == 0:
        counted = sum([len(stubs) async for stubs in scan.windows(None)])
        return _resource(fhir.bundle("searchset", [], total=counted, base=_base(request),
                                     links=[("self", _page_url(request, None))]))
    found: list[_Stub] = []
    async for stubs in scan.windows(cursor):
        found += stubs
        if len(found) > count:
            break
    chosen = found[:count]
    links = [("self", _page_url(request, cursor and f"{cursor[0]}.{cursor[1]}"))]
    if len(found) > count:
        links.append(("next", _page_url(request, f"{chosen[-1].t}.{chosen[-1].id}")))
    total: int | None = None
    if total_wanted == "accurate":
        total = sum([len(stubs) async for stubs in scan.windows(None)])
    return _resource(fhir.bundle("searchset", [stub.build() for stub in chosen], total=total,
                                 links=links, base=_base(request)))


def _base(request: web.Request) -> str:
    """The FHIR base URL as the client reached it: what absolute fullUrls start with."""
    return f"{request.scheme}://{request.host}/fhir"


class _Scan:
    """The matching Observations of a search, window by window in the order asked for.
    Windows are whole hours (an hour's SampledData is built from the whole hour, whatever
    the dates asked), start at one day and double while they find nothing, and cover only
    the span that holds the patient's data."""

    def __init__(self, request: web.Request, access: Access, patient_id: uuid.UUID,
                 metrics: list[str], start: dt.datetime, end: dt.datetime,
                 descending: bool) -> None:
        self._request, self._access, self._patient = request, access, patient_id
        self._metrics, self._start, self._end = metrics, start, end
        self._descending = descending

    async def windows(self, cursor: tuple[int, str] | None
                      ) -> AsyncIterator[list[_Stub]]:
        """Lists of stubs, each sorted, each list after the previous in search order;
        with ``cursor`` only what comes after it."""
        if not self._metrics or self._start >= self._end:
            return
        extent = await data_extent(self._request.app[DEPS].pool, self._patient,
                                   self._metrics, _floor_hour(self._start),
                                   _ceil_hour(self._end))
        if extent is None:
            return
        lo = max(_floor_hour(self._start), _floor_hour(extent[0]))
        hi = min(_ceil_hour(self._end), _floor_hour(extent[1]) + dt.timedelta(hours=1))
        if cursor is not None:
            at = _floor_hour(_from_ms(cursor[0]))
            if self._descending:
                hi = min(hi, at + dt.timedelta(hours=1))
            else:
                lo = max(lo, at)
        size = FIRST_WINDOW
        while lo < hi:
            if self._descending:
                a, b = max(lo, hi - size), hi
                hi = a
            else:
                a, b = lo, min(hi, lo + size)
                lo = b
            stubs = [s for s in await self.stubs_in(a, b) if self._after(s, cursor)]
            stubs.sort(key=lambda s: (s.t, s.id), reverse=self._descending)
            size = min(size * 2, MAX_WINDOW) if not stubs else FIRST_WINDOW
            if stubs:
                yield stubs

    def _after(self, stub: _Stub, cursor: tuple[int, str] | None) -> bool:
        start_ms, end_ms = _ms(self._start), _ms(self._end)
        if not (stub.last >= start_ms and stub.first < end_ms):
            return False
        if cursor is None:
            return True
        return (stub.t, stub.id) < cursor if self._descending else (stub.t, stub.id) > cursor

    async def stubs_in(self, a: dt.datetime, b: dt.datetime) -> list[_Stub]:
        """Every granted Observation in [a, b), whole hours: unsorted, unfiltered."""
        by_source: dict[str, dict[str, Samples]] = {}
        for metric in self._metrics:
            for device_id, samples in (await _granted_by_source(
                    self._request, self._access, self._patient, metric, a, b)).items():
                by_source.setdefault(device_id, {})[metric] = _clean(samples)
        return [stub for device_id, series in sorted(by_source.items())
                for stub in _stubs(self._patient, series, device_id)]


def _floor_hour(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: dt.datetime) -> dt.datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment or floor + dt.timedelta(hours=1) > LATEST \
        else floor + dt.timedelta(hours=1)


def _ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def _from_ms(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


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


def _page_url(request: web.Request, cursor: str | None) -> str:
    query = [(k, v) for k, v in request.query.items() if k != "_cursor"]
    if cursor:
        query.append(("_cursor", cursor))
    return f"{request.scheme}://{request.host}{request.path}?{urlencode(query)}"


def _clean(samples: Samples) -> Samples:
    keep = reliable(samples.flags)
    return Samples(samples.t_ms[keep], samples.value[keep], samples.flags[keep])


# Observation ids carry a metric's place in the catalogue: new metrics go at its end.
_METRIC_INDEX = {name: i for i, name in enumerate(METRICS)}
_OID = re.compile(r"(bp|m\d{1,2})-([0-9a-f]{32})-(\d{1,15})-([0-9a-f]{8})")


def source_tag(device_id: str | None) -> str:
    return hashlib.sha256((device_id or "").encode()).hexdigest()[:8]


def _oid(patient_id: uuid.UUID, metric: str, t: int, device_id: str | None) -> str:
    """An Observation's id, which says where it comes from, so that it can be read back:
    the metric (``bp`` for a blood-pressure panel), the patient, the time (ms of a reading,
    the hour number of a series) and a tag of the source device. At most 58 characters
    (FHIR allows 64); no health value in it."""
    kind = "bp" if metric == "blood_pressure" else f"m{_METRIC_INDEX[metric]}"
    return f"{kind}-{patient_id.hex}-{t}-{source_tag(device_id)}"


@dataclass(frozen=True, slots=True)
class _Address:
    """Where an Observation's samples lie, from its id."""

    patient_id: uuid.UUID
    metrics: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime


def _address(observation_id: str) -> _Address | None:
    found = _OID.fullmatch(observation_id)
    if not found:
        return None
    kind, patient_hex, t = found[1], found[2], int(found[3])
    if kind == "bp":
        metrics: tuple[str, ...] = BP
    else:
        index = int(kind[1:])
        if index >= len(METRICS):
            return None
        metrics = (list(METRICS)[index],)
    if metrics[0] in SERIES:
        start_ms, end_ms = t * HOUR_MS, (t + 1) * HOUR_MS
    else:
        start_ms, end_ms = t, t + 1
    start, end = _from_ms(start_ms), _from_ms(end_ms)
    if not (EARLIEST <= start and end <= LATEST):
        return None
    return _Address(uuid.UUID(hex=patient_hex), metrics, start, end)


@fhir_errors
async def read_observation(request: web.Request) -> web.Response:
    """One Observation by the id a search gave it: the same content whatever search found
    it (a series is always its whole hour), for a clinician the patient shares it with.
    An id of another patient answers 403 like every route; one that names no shared
    Observation, 404."""
    observation_id = request.match_info["observation_id"]
    address = _address(observation_id)
    if address is None:
        bearer_claims(request, health_data=True)  # 401 before 404, as on every route
        raise Problem(404, f"no Observation {observation_id}")
    _, access = await clinician_access(request, address.patient_id, action="read",
                                       resource=f"fhir/Observation/{observation_id}")
    scan = _Scan(request, access, address.patient_id, list(address.metrics),
                 address.start, address.end, descending=False)
    for stub in await scan.stubs_in(address.start, address.end):
        if stub.id == observation_id:
            return _resource(stub.build())
    raise Problem(404, f"no Observation {observation_id}")


@dataclass(frozen=True, slots=True)
class _Stub:
    """An Observation not built yet: its sort key (the reading's time; a series' hour,
    which later samples never move), its id, and the times of its first and last sample
    (what a date search matches)."""

    t: int
    id: str
    build: Callable[[], dict[str, Any]]
    first: int
    last: int


def observations(patient_id: uuid.UUID, series: Mapping[str, Samples],
                 device_id: str | None = None, span_ms: int = HOUR_MS
                 ) -> list[tuple[int, dict[str, Any]]]:
    """(effective time, Observation) for every shared sample of one source: spot readings
    one by one, blood pressure as panels, dense streams and RR intervals per hour (per
    ``span_ms``) as SampledData. With ``device_id`` each Observation references the device
    and its id includes it. A ``span_ms`` other than an hour (the export's day) gives ids
    of their own, which the read API does not serve: its Observations are hourly."""
    return [(stub.t, stub.build())
            for stub in _stubs(patient_id, series, device_id, span_ms)]


def _stubs(patient_id: uuid.UUID, series: Mapping[str, Samples], device_id: str | None,
           span_ms: int = HOUR_MS) -> list[_Stub]:
    subject = f"Patient/{patient_id}"
    device_ref = f"Device/{device_id}" if device_id else None
    out: list[_Stub] = []
    for metric, samples in series.items():
        if metric not in SERIES and metric not in BP:
            for t, v in zip(samples.t_ms.tolist(), samples.value.tolist(), strict=True):
                oid = _oid(patient_id, metric, t, device_id)
                out.append(_Stub(t, oid, functools.partial(
                    fhir.observation, oid, metric, subject, t, v, device_ref=device_ref),
                    t, t))
        elif metric in SERIES:
            out += _series(patient_id, metric, samples, device_id, span_ms)
    if all(m in series for m in BP):
        sys_s, dia_s = series[BP[0]], series[BP[1]]
        common, i, j = np.intersect1d(sys_s.t_ms, dia_s.t_ms, return_indices=True)
        for k, t in enumerate(common.tolist()):
            oid = _oid(patient_id, "blood_pressure", t, device_id)
            out.append(_Stub(t, oid, functools.partial(
                fhir.blood_pressure, oid, subject, t, float(sys_s.value[i[k]]),
                float(dia_s.value[j[k]]), device_ref=device_ref), t, t))
    return out


def _series(patient_id: uuid.UUID, metric: str, samples: Samples, device_id: str | None,
            span_ms: int) -> list[_Stub]:
    """One Observation per ``span_ms`` (UTC hours or days) that holds samples."""
    device_ref = f"Device/{device_id}" if device_id else None
    t, v = samples.t_ms, samples.value
    period = SAMPLED_PERIOD_MS.get(metric, 0)
    if metric in ADDITIVE and len(t):  # counts add up within a grid slot
        slots, inverse = np.unique(t // period, return_inverse=True)
        t = (slots * period).astype(np.int64)
        v = np.bincount(inverse, weights=v).astype(np.float64)
    out = []
    spans, first = np.unique(t // span_ms, return_index=True)
    bounds = [*first[1:], len(t)]
    subject = f"Patient/{patient_id}"
    for n, a, b in zip(spans.tolist(), first.tolist(), bounds, strict=True):
        oid = (_oid(patient_id, metric, n, device_id) if span_ms == HOUR_MS
               else _span_oid(patient_id, metric, n, span_ms, device_id))
        build = (functools.partial(fhir.rr_series, oid, subject, t[a:b], v[a:b],
                                   device_ref=device_ref) if metric == "rr_interval"
                 else functools.partial(fhir.sampled, oid, metric, subject, t[a:b], v[a:b],
                                        period, device_ref=device_ref))
        out.append(_Stub(n * span_ms, oid, build, int(t[a]), int(t[b - 1])))
    return out


def _span_oid(patient_id: uuid.UUID, metric: str, n: int, span_ms: int,
              device_id: str | None) -> str:
    """The id of a series over another span than an hour: the span's letter (``d`` for
    a day) after the metric, so that it never names an hourly Observation."""
    letter = "d" if span_ms == DAY_MS else f"s{span_ms}"
    return f"m{_METRIC_INDEX[metric]}{letter}-{patient_id.hex}-{n}-{source_tag(device_id)}"
