"""Clinician routes: sign-in (password + code, or the identity provider), the patients who
shared with me, and per-patient summaries and charts limited to what was shared."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiohttp import web

from api.access import clinician_access, read_granted
from api.account_routes import GUARD, client_of, issue_session, staff_login
from api.bodies import ClinicianLogin, IdToken
from api.limits import TooMany, too_many
from api.oidc import OidcError
from api.problems import Problem
from api.representations import episode_json, summary_json
from api.requests import (
    CLINICIAN_SUBJECT,
    DEPS,
    bearer_claims,
    clinician_of,
    read_body,
    time_param,
    uuid_param,
)
from storage.clinicians import Clinicians
from storage.consents import Consents
from storage.days import Days
from storage.errors import IdentityConflict
from storage.nonces import NONCE_TTL, Nonces
from vitals.catalogue import METRICS
from vitals.charts import svg_chart
from vitals.daily import merge_sources
from vitals.errors import InvalidProfessional
from vitals.normalise import reliable
from vitals.summaries import blood_pressure_episodes, summarise, summarise_sources

DEFAULT_PERIOD = dt.timedelta(days=7)
MAX_PERIOD = dt.timedelta(days=366)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/clinicians/login", login)
    app.router.add_post("/v1/clinicians/oidc/nonce", oidc_nonce)
    app.router.add_post("/v1/clinicians/oidc", oidc_login)
    app.router.add_get("/v1/clinician/patients", my_patients)
    app.router.add_get("/v1/clinician/patients/{patient_id}/summary", summary)
    app.router.add_get("/v1/clinician/patients/{patient_id}/charts/{metric}", chart)


async def login(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    body = await read_body(request, ClinicianLogin)
    return await staff_login(request, CLINICIAN_SUBJECT, Clinicians(deps.pool, deps.keyring),
                             body.username, body.password, body.totp)


async def oidc_nonce(request: web.Request) -> web.Response:
    """A nonce for the app to send in its authorisation request to the identity provider;
    the ID token that comes back must carry it, and it is good for one sign-in."""
    deps = request.app[DEPS]
    if deps.oidc is None:
        raise Problem(404, "sign-in through an identity provider is not configured")
    try:
        request.app[GUARD].nonce(client_of(request))
    except TooMany as exc:
        return too_many(exc)
    nonce = await Nonces(deps.pool).issue()
    return web.json_response({"nonce": nonce, "expires_in": int(NONCE_TTL.total_seconds())},
                             status=201)


async def oidc_login(request: web.Request) -> web.Response:
    """Exchange an ID token of the identity provider for our access token; the token's
    nonce must be one we issued, unexpired and not spent."""
    deps = request.app[DEPS]
    if deps.oidc is None:
        raise Problem(404, "sign-in through an identity provider is not configured")
    body = await read_body(request, IdToken)
    try:
        identity = await deps.oidc.verify(body.id_token)
        if not await Nonces(deps.pool).spend(identity.nonce):
            raise OidcError("the nonce is unknown, expired or already used")
        clinician = await Clinicians(deps.pool, deps.keyring).from_identity_provider(
            subject=identity.subject, rpps=identity.rpps, profession=identity.profession,
            display_name=identity.display_name)
    except OidcError as exc:
        raise Problem(401, f"the identity provider's token is not accepted: {exc}") from None
    except InvalidProfessional as exc:
        raise Problem(403, str(exc)) from None
    except IdentityConflict as exc:
        raise Problem(409, f"{exc}; an administrator can resolve it") from None
    return await issue_session(request, f"{CLINICIAN_SUBJECT}{clinician.id}", ["oidc", "mfa"])


async def my_patients(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    clinician_id = clinician_of(bearer_claims(request, health_data=True))
    patients = await Consents(deps.pool).patients_of(clinician_id, dt.datetime.now(dt.UTC))
    return web.json_response({"patients": [{"patient_id": str(p)} for p in patients]})


def _period(request: web.Request) -> tuple[dt.datetime, dt.datetime]:
    end = time_param(request, "to", dt.datetime.now(dt.UTC))
    start = time_param(request, "from", end - DEFAULT_PERIOD)
    if not start < end <= start + MAX_PERIOD:
        raise Problem(400, "from must be before to, at most a year apart")
    return start, end


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


async def summary(request: web.Request) -> web.Response:
    """Per shared metric: latest, spread, trend, completeness and flagged episodes; several
    devices of one metric counted once by the patient's priority order, days in the
    patient's local time."""
    deps = request.app[DEPS]
    patient_id = uuid_param(request, "patient_id", status=403)
    start, end = _period(request)
    _, access = await clinician_access(request, patient_id, action="read", resource="summary")
    days = Days(deps.pool, deps.store)
    history = await days.zone_history(patient_id)
    metrics: dict[str, Any] = {}
    merged = {}
    for name in sorted(access.windows):
        per_source, order = await days.by_source(patient_id, name,
                                                 access.clip(name, start, end))
        samples = {d: (s.t_ms, s.value, s.flags) for d, s in per_source.items()}
        found = await asyncio.to_thread(summarise_sources, name, samples, order, _ms(start),
                                        _ms(end), history)
        metrics[name] = summary_json(found)
        if name in ("systolic_bp", "diastolic_bp"):
            clean = {d: (t[reliable(f)], v[reliable(f)]) for d, (t, v, f) in samples.items()}
            merged[name] = merge_sources(name, clean, order)[0]
    if "systolic_bp" in merged and "diastolic_bp" in merged:
        (t_s, v_s), (t_d, v_d) = merged["systolic_bp"], merged["diastolic_bp"]
        episodes = blood_pressure_episodes(t_s, v_s, t_d, v_d)
        metrics["systolic_bp"]["episodes"] = [episode_json(e) for e in episodes]
    return web.json_response({"patient_id": str(patient_id), "from": start.isoformat(),
                              "to": end.isoformat(), "metrics": metrics})


async def chart(request: web.Request) -> web.Response:
    """One shared metric as a small SVG chart; a metric not shared is not found."""
    patient_id = uuid_param(request, "patient_id", status=403)
    name = request.match_info["metric"].removesuffix(".svg")
    start, end = _period(request)
    _, access = await clinician_access(request, patient_id, action="read",
                                       resource=f"chart/{name}")
    if name not in access.windows:
        raise Problem(404, "no such chart")
    samples = await read_granted(request, access, patient_id, name, start, end)
    clean = reliable(samples.flags)
    s = summarise(name, samples.t_ms, samples.value, samples.flags, _ms(start), _ms(end))
    m = METRICS[name]
    svg = svg_chart(m.display, m.unit, samples.t_ms[clean], samples.value[clean], _ms(start),
                    _ms(end), s.episodes)
    return web.Response(text=svg, content_type="image/svg+xml")
