"""The aiohttp application: the route table, login, and the caller's own vitals."""

from __future__ import annotations

import datetime as dt
import functools

from aiohttp import web

from api import clinician_routes, consent_routes, credentials, day_routes, fhir_routes
from api.problems import Problem, problem_middleware
from api.requests import DEPS, ApiDeps, bearer_claims, patient_of, strict_body, time_param
from vitals.catalogue import METRICS

MAX_BODY_BYTES = 64 * 1024  # no API body is larger; bigger ones get 413
MAX_SAMPLES = 50_000  # a day of 1 Hz heart rate with room; more must be paged or rolled up
DEFAULT_RANGE = dt.timedelta(hours=24)


def create_app(deps: ApiDeps) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=MAX_BODY_BYTES)
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_get("/v1/me/vitals/{metric}", my_vitals)
    # Route modules register here, one line each: module.register(app)
    clinician_routes.register(app)
    consent_routes.register(app)
    fhir_routes.register(app)
    day_routes.register(app)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEPS].tokens.jwks())


async def login(request: web.Request) -> web.Response:
    """Password and TOTP code in one step; answers an ES256 access token."""
    deps = request.app[DEPS]
    body = await strict_body(request, {"username": str, "password": str, "totp": str})
    patient = await deps.patients.by_username(body["username"])
    account = (patient.password_hash, functools.partial(deps.patients.totp_secret, patient.id)
               ) if patient else None
    ok = await credentials.check(account, body["password"], body["totp"])
    if patient is not None:
        await deps.audit.record(actor=f"patient:{patient.id}", patient_id=patient.id,
                                action="login", resource="session",
                                outcome="ok" if ok else "refused")
    if patient is None or not ok:
        raise Problem(401, "unknown username, wrong password or wrong code")
    token = deps.tokens.issue(str(patient.id), methods=["pwd", "otp"])
    return web.json_response({"access_token": token, "token_type": "Bearer",
                              "expires_in": deps.tokens.ttl_s})


async def my_vitals(request: web.Request) -> web.Response:
    """The caller's own samples of one metric, in the canonical unit, over a time range."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    name = request.match_info["metric"]
    metric = METRICS.get(name)
    if metric is None:
        raise Problem(404, f"unknown metric {name!r}")
    now = dt.datetime.now(dt.UTC)
    end = time_param(request, "to", now)
    start = time_param(request, "from", end - DEFAULT_RANGE)
    if start >= end:
        raise Problem(400, "from must be before to")
    series = await deps.store.read_series(patient_id, name, start, end)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                            action="read", resource=f"vitals/{name}", outcome="ok")
    truncated = len(series) > MAX_SAMPLES
    n = min(len(series), MAX_SAMPLES)
    samples = [{"t": _iso(int(t)), "v": float(v), "flags": int(f)}
               for t, v, f in zip(series.t_ms[:n], series.value[:n], series.flags[:n],
                                  strict=True)]
    return web.json_response({"metric": name, "unit": metric.unit, "loinc": metric.loinc,
                              "from": start.isoformat(), "to": end.isoformat(),
                              "samples": samples, "truncated": truncated})


def _iso(ms: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
