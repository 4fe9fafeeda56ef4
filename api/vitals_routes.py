"""My vitals: one metric over a range at raw, 1-minute, 1-hour or 1-day resolution; the
latest value of each metric; and a summary per metric over a period."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import numpy as np
from aiohttp import web

from api.problems import Problem
from api.representations import summary_json
from api.requests import DEPS, bearer_claims, patient_of, time_param
from storage.days import Days
from storage.reads import RESOLUTIONS, read_stats
from storage.rollups import Rollups
from storage.segments import Samples
from vitals.catalogue import METRICS
from vitals.days import zone_at
from vitals.fhir import instant
from vitals.summaries import summarise_sources

MAX_POINTS = 50_000  # a day of 1 Hz heart rate with room; more must be rolled up or paged
DEFAULT_RANGE = dt.timedelta(hours=24)
MAX_RANGE = dt.timedelta(days=366)
LATEST_LOOKBACK = dt.timedelta(days=30)
EMPTY = Samples(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint8))


def register(app: web.Application) -> None:
    app.router.add_get("/v1/me/vitals", latest)
    app.router.add_get("/v1/me/vitals/{metric}", my_vitals)
    app.router.add_get("/v1/me/summary", my_summary)


def _range(request: web.Request, default: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    end = time_param(request, "to", dt.datetime.now(dt.UTC))
    start = time_param(request, "from", end - default)
    if not start < end <= start + MAX_RANGE:
        raise Problem(400, "from must be before to, at most a year apart")
    return start, end


async def my_vitals(request: web.Request) -> web.Response:
    """My samples of one metric in the canonical unit, of all my devices or of ``device``
    alone; with ``resolution`` 1m or 1h, per-bucket count, min, max, mean and standard
    deviation of all devices together (a chart of what was measured); with 1d, one bucket
    per local day of my time zones, the sources merged by my priority order exactly as
    GET /v1/me/daily does (a day cut by the range counts its part inside only)."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    name = request.match_info["metric"]
    metric = METRICS.get(name)
    if metric is None:
        raise Problem(404, f"unknown metric {name!r}")
    resolution = request.query.get("resolution", "raw")
    if resolution not in RESOLUTIONS:
        raise Problem(400, "resolution is raw, 1m, 1h or 1d")
    device = request.query.get("device")
    if device is not None and resolution != "raw":
        raise Problem(400, "device reads raw samples only: per-source days are in "
                           "GET /v1/me/daily")
    start, end = _range(request, DEFAULT_RANGE)
    if device is not None and not await _my_source(deps.pool, patient_id, name, device):
        raise Problem(404, "no such device of yours")  # the same for another's and none
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="read",
                            resource=f"vitals/{name}", outcome="ok", client=request.remote)
    body: dict[str, Any] = {"metric": name, "unit": metric.unit, "loinc": metric.loinc,
                            "from": start.isoformat(), "to": end.isoformat(),
                            "resolution": resolution}
    if resolution == "raw":
        if device is None:
            series = await deps.store.read_series(patient_id, name, start, end)
        else:
            body["device"] = device
            series = (await deps.store.read_by_source(patient_id, name, start, end)).get(
                device, EMPTY)
        n = min(len(series), MAX_POINTS)
        body["samples"] = [{"t": instant(int(t)), "v": float(v), "flags": int(f)}
                           for t, v, f in zip(series.t_ms[:n], series.value[:n],
                                              series.flags[:n], strict=True)]
        body["truncated"] = len(series) > MAX_POINTS
        return web.json_response(body)
    if resolution == "1d":
        try:
            figures, order, history = await Days(deps.pool, deps.store).figures_between(
                patient_id, name, start, end)
        except ValueError as exc:
            raise Problem(400, str(exc)) from None
        body["zone"] = zone_at(history, int(end.timestamp() * 1000) - 1)
        body["source_order"] = order
        body["buckets"] = [{"t": instant(f.start_ms), "date": f.day.isoformat(),
                            "hours": f.hours, "count": f.count, "min": f.minimum,
                            "max": f.maximum, "mean": f.mean, "std": f.std,
                            "total": f.total, "value": f.value} for f in figures]
        body["truncated"] = False
        return web.json_response(body)
    b = await read_stats(deps.pool, deps.store, Rollups(deps.pool, deps.keyring, deps.store),
                         patient_id, name, start, end, resolution)
    n = min(len(b), MAX_POINTS)
    body["buckets"] = [{"t": instant(int(b.t_ms[i])), "count": int(b.count[i]),
                        "min": float(b.minimum[i]), "max": float(b.maximum[i]),
                        "mean": float(b.mean[i]), "std": float(b.std[i])} for i in range(n)]
    body["truncated"] = len(b) > MAX_POINTS
    return web.json_response(body)


async def _my_source(pool: asyncpg.Pool, patient_id: uuid.UUID, metric: str,
                     device: str) -> bool:
    """A device paired to me now, or one that measured this metric for me before (its
    samples stay mine after it changes hands)."""
    return bool(await pool.fetchval(
        """SELECT EXISTS (SELECT 1 FROM devices WHERE id = $2 AND patient_id = $1)
               OR EXISTS (SELECT 1 FROM segments
                          WHERE patient_id = $1 AND metric = $3 AND device_id = $2)""",
        patient_id, device, metric))


async def latest(request: web.Request) -> web.Response:
    """The latest value of every metric I have measured in the last 30 days."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    end = dt.datetime.now(dt.UTC)
    found = {}
    for name, metric in METRICS.items():
        series = await deps.store.read_series(patient_id, name, end - LATEST_LOOKBACK, end)
        if len(series):
            found[name] = {"t": instant(int(series.t_ms[-1])),
                           "value": float(series.value[-1]), "unit": metric.unit,
                           "flags": int(series.flags[-1])}
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="read",
                            resource="vitals/latest", outcome="ok", client=request.remote)
    return web.json_response({"latest": found})


async def my_summary(request: web.Request) -> web.Response:
    """Per metric over the period (default: 7 days): latest, spread, trend, completeness
    and the episodes the clinicians' rules flag; several devices of one metric counted
    once, by my priority order; days are my local days."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    start, end = _range(request, dt.timedelta(days=7))
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    days = Days(deps.pool, deps.store)
    history = await days.zone_history(patient_id)
    out = {}
    for name in METRICS:
        per_source, order = await days.by_source(patient_id, name, [(start, end)])
        if not per_source:
            continue
        samples = {d: (s.t_ms, s.value, s.flags) for d, s in per_source.items()}
        out[name] = summary_json(await asyncio.to_thread(
            summarise_sources, name, samples, order, lo, hi, history))
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="read",
                            resource="summary", outcome="ok", client=request.remote)
    return web.json_response({"from": start.isoformat(), "to": end.isoformat(),
                              "metrics": out})
