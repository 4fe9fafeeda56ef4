"""My time zone, my daily figures per local day, and which of my devices counts first."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import numpy as np
from aiohttp import web
from msgspec import UNSET

from api.bodies import SourceOrder, ZoneChange
from api.problems import Problem
from api.requests import (
    DEPS,
    EARLIEST,
    LATEST,
    bearer_claims,
    parse_instant,
    patient_of,
    read_body,
)
from storage.days import MAX_DAYS, Days
from vitals.catalogue import METRICS
from vitals.days import DEFAULT_ZONE, day_of, local_days
from vitals.fhir import instant


def register(app: web.Application) -> None:
    app.router.add_get("/v1/me/timezone", get_zone)
    app.router.add_put("/v1/me/timezone", put_zone)
    app.router.add_get("/v1/me/daily/{metric}", get_daily)
    app.router.add_get("/v1/me/sources/{metric}", get_sources)
    app.router.add_put("/v1/me/sources/{metric}", put_sources)


def _days(request: web.Request) -> Days:
    deps = request.app[DEPS]
    return Days(deps.pool, deps.store)


def _metric(request: web.Request) -> str:
    name = request.match_info["metric"]
    if name not in METRICS:
        raise Problem(404, f"unknown metric {name!r}")
    return name


def _zones_json(history: list[Any]) -> dict[str, Any]:
    return {"zone": history[-1].zone if history else DEFAULT_ZONE,
            "history": [{"effective_from": instant(s.effective_from_ms), "zone": s.zone}
                        for s in history]}


async def get_zone(request: web.Request) -> web.Response:
    patient_id = patient_of(bearer_claims(request, health_data=False))
    return web.json_response(_zones_json(await _days(request).zone_history(patient_id)))


async def put_zone(request: web.Request) -> web.Response:
    """Change my zone from now on, or from ``effective_from`` (in the past: a trip recorded
    late) until my next recorded change; days before keep the zone they were lived in."""
    patient_id = patient_of(bearer_claims(request, health_data=False))
    body = await read_body(request, ZoneChange)
    moment = None
    if body.effective_from is not UNSET:
        moment = parse_instant(body.effective_from, "effective_from", status=422)
    try:
        history = await _days(request).set_zone(patient_id, body.zone, moment)
    except ValueError as exc:  # an unknown zone, or an instant in the future
        raise Problem(422, str(exc)) from None
    return web.json_response(_zones_json(history))


def _date(request: web.Request, name: str, default: dt.date) -> dt.date:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise Problem(400, f"{name} must be a date, YYYY-MM-DD") from None
    if not EARLIEST.date() <= day < LATEST.date():
        raise Problem(400, f"{name} must be between {EARLIEST.year} and {LATEST.year}")
    return day


async def _today(request: web.Request, patient_id: uuid.UUID) -> dt.date:
    """Today where I am, not in UTC: in Kolkata after 18:30 UTC it is already tomorrow."""
    history = await _days(request).zone_history(patient_id)
    now = np.array([int(dt.datetime.now(dt.UTC).timestamp() * 1000)], np.int64)
    return day_of(int(local_days(now, history)[0]))


async def get_daily(request: web.Request) -> web.Response:
    """One figure per local day (see vitals/daily.py for which), with each source's own."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    metric = _metric(request)
    last = _date(request, "to", await _today(request, patient_id))
    first = _date(request, "from", last - dt.timedelta(days=6))
    if not first <= last or (last - first).days >= MAX_DAYS:
        raise Problem(400, f"from must not be after to, at most {MAX_DAYS} days")
    figures, order, history = await _days(request).figures(patient_id, metric, first, last)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="read",
                            resource=f"daily/{metric}", outcome="ok", client=request.remote)
    return web.json_response({
        "metric": metric, "unit": METRICS[metric].unit, "source_order": order,
        "zone": _zones_json(history)["zone"],
        "days": [{"date": f.day.isoformat(), "hours": f.hours, "value": f.value,
                  "count": f.count, "min": f.minimum, "max": f.maximum,
                  "sources": f.sources, "counted": f.counted} for f in figures]})


async def get_sources(request: web.Request) -> web.Response:
    patient_id = patient_of(bearer_claims(request, health_data=False))
    metric = _metric(request)
    return web.json_response({"metric": metric, "device_ids":
                              await _days(request).source_order(patient_id, metric)})


async def put_sources(request: web.Request) -> web.Response:
    """My order of devices for a metric, best first; only my own devices."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=False))
    metric = _metric(request)
    ids = (await read_body(request, SourceOrder)).device_ids
    if len(set(ids)) != len(ids) or len(ids) > 20:
        raise Problem(422, "device_ids is a list of distinct device ids (at most 20)")
    mine = {r["id"] for r in await deps.pool.fetch(
        "SELECT id FROM devices WHERE patient_id = $1", patient_id)}
    foreign = sorted(set(ids) - mine)
    if foreign:
        raise Problem(422, "not your devices", extra={"device_ids": foreign})
    await _days(request).set_source_order(patient_id, metric, ids)
    return web.json_response({"metric": metric, "device_ids": ids})
