"""My vitals: one metric over a range at raw, 1-minute, 1-hour or 1-day resolution; the
latest value of each metric; and a summary per metric over a period."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from api.problems import Problem
from api.representations import summary_json
from api.requests import DEPS, bearer_claims, patient_of, time_param
from storage.reads import RESOLUTIONS, read_stats
from storage.rollups import Rollups
from vitals.catalogue import METRICS
from vitals.fhir import instant
from vitals.summaries import summarise

MAX_POINTS = 50_000  # a day of 1 Hz heart rate with room; more must be rolled up or paged
DEFAULT_RANGE = dt.timedelta(hours=24)
MAX_RANGE = dt.timedelta(days=366)
LATEST_LOOKBACK = dt.timedelta(days=30)


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
    """My samples of one metric in the canonical unit; with ``resolution`` 1m, 1h or 1d,
    per-bucket count, min, max, mean and standard deviation instead."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    name = request.match_info["metric"]
    metric = METRICS.get(name)
    if metric is None:
        raise Problem(404, f"unknown metric {name!r}")
    resolution = request.query.get("resolution", "raw")
    if resolution not in RESOLUTIONS:
        raise Problem(400, "resolution is raw, 1m, 1h or 1d")
    start, end = _range(request, DEFAULT_RANGE)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                            action="read", resource=f"vitals/{name}", outcome="ok")
    body: dict[str, Any] = {"metric": name, "unit": metric.unit, "loinc": metric.loinc,
                            "from": start.isoformat(), "to": end.isoformat(),
                            "resolution": resolution}
    if resolution == "raw":
        series = await deps.store.read_series(patient_id, name, start, end)
        n = min(len(series), MAX_POINTS)
        body["samples"] = [{"t": instant(int(t)), "v": float(v), "flags": int(f)}
                           for t, v, f in zip(series.t_ms[:n], series.value[:n],
                                              series.flags[:n], strict=True)]
        body["truncated"] = len(series) > MAX_POINTS
        return web.json_response(body)
    b = await read_stats(deps.pool, deps.store, Rollups(deps.pool, deps.keyring, deps.store),
                         patient_id, name, start, end, resolution)
    n = min(len(b), MAX_POINTS)
    body["buckets"] = [{"t": instant(int(b.t_ms[i])), "count": int(b.count[i]),
                        "min": float(b.minimum[i]), "max": float(b.maximum[i]),
                        "mean": float(b.mean[i]), "std": float(b.std[i])} for i in range(n)]
    body["truncated"] = len(b) > MAX_POINTS
    return web.json_response(body)


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
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                            action="read", resource="vitals/latest", outcome="ok")
    return web.json_response({"latest": found})


async def my_summary(request: web.Request) -> web.Response:
    """Per metric over the period (default: 7 days): latest, spread, trend, completeness
    and the episodes the clinicians' rules flag."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    start, end = _range(request, dt.timedelta(days=7))
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    out = {}
    for name in METRICS:
        s = await deps.store.read_series(patient_id, name, start, end)
        if not len(s):
            continue
        out[name] = summary_json(summarise(name, s.t_ms, s.value, s.flags, lo, hi))
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                            action="read", resource="summary", outcome="ok")
    return web.json_response({"from": start.isoformat(), "to": end.isoformat(),
                              "metrics": out})
