"""The patient's side of sharing: consents to clinicians, the access log, the record feed."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from aiohttp import web

from api import record_link_routes
from api.bodies import FeedChoice, NewConsent
from api.problems import Problem
from api.requests import (
    DEPS,
    bearer_claims,
    int_param,
    parse_instant,
    patient_of,
    read_body,
    uuid_param,
)
from storage import device_refs
from storage.clinicians import Clinicians
from storage.consents import Consent, Consents
from storage.record_feed import RecordFeed
from vitals import fhir
from vitals.categories import expand

ACCESS_LOG_MAX = 500
MAX_CONSENT = dt.timedelta(days=366)  # a consent is renewed deliberately, not forgotten


def register(app: web.Application) -> None:
    app.router.add_post("/v1/me/consents", grant)
    app.router.add_get("/v1/me/consents", list_consents)
    app.router.add_delete("/v1/me/consents/{consent_id}", revoke)
    app.router.add_get("/v1/me/access-log", access_log)
    app.router.add_get("/v1/me/record-feed", feed_status)
    app.router.add_put("/v1/me/record-feed", feed_consent)
    record_link_routes.register(app)


def _when(body: NewConsent, name: str) -> dt.datetime:
    return parse_instant(getattr(body, name), name, status=422)


def _consent_json(c: Consent, now: dt.datetime) -> dict[str, Any]:
    return {"id": str(c.id), "clinician_id": str(c.clinician_id), "metrics": list(c.metrics),
            "data_from": c.data_from.isoformat(), "data_to": c.data_to.isoformat(),
            "expires_at": c.expires_at.isoformat(), "granted_at": c.granted_at.isoformat(),
            "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
            "active": c.active(now)}


async def grant(request: web.Request) -> web.Response:
    """Share chosen metrics (or categories) of a data period with a clinician, until an
    expiry. The clinician is named by RPPS number, as on their prescription pad."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    body = await read_body(request, NewConsent)
    try:
        metrics = expand(body.metrics, body.categories)
    except ValueError as exc:
        raise Problem(422, str(exc)) from None
    if not metrics:
        raise Problem(422, "choose at least one metric or category")
    data_from, data_to = _when(body, "data_from"), _when(body, "data_to")
    expires_at = _when(body, "expires_at")
    now = dt.datetime.now(dt.UTC)
    if data_from >= data_to:
        raise Problem(422, "data_from must be before data_to")
    if not now < expires_at <= now + MAX_CONSENT:
        raise Problem(422, "expires_at must be in the future, at most a year away")
    clinician = await Clinicians(deps.pool, deps.keyring).by_rpps(body.clinician_rpps)
    if clinician is None:
        raise Problem(422, "no clinician with this RPPS number uses healthiot")
    consent = await Consents(deps.pool).grant(patient_id, clinician.id, metrics, data_from,
                                              data_to, expires_at)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="consent",
                            resource=f"consent/{consent.id}", outcome="granted",
                            client=request.remote)
    out = _consent_json(consent, now)
    out["clinician"] = {"rpps": clinician.rpps, "name": clinician.display_name,
                        "profession": clinician.profession}
    return web.json_response(out, status=201)


async def list_consents(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    now = dt.datetime.now(dt.UTC)
    consents = await Consents(deps.pool).for_patient(patient_id)
    return web.json_response({"consents": [_consent_json(c, now) for c in consents]})


async def revoke(request: web.Request) -> web.Response:
    """Revoke a consent: the clinician's next request is refused. One factor suffices:
    stopping a share can only protect the patient, and must work with a lost phone."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=False))
    consent_id = uuid_param(request, "consent_id")
    if not await Consents(deps.pool).revoke(patient_id, consent_id):
        raise Problem(404, "no such active consent")
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="consent",
                            resource=f"consent/{consent_id}", outcome="revoked",
                            client=request.remote)
    return web.Response(status=204)


async def access_log(request: web.Request) -> web.Response:
    """Every access to my data: who, when, what, outcome. ``?format=fhir`` answers IHE BALP
    AuditEvents in a Bundle, for apps that speak FHIR."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    if request.query.get("format", "json") not in ("json", "fhir"):
        raise Problem(400, "format is json (the default) or fhir")
    limit = int_param(request, "limit", 100, ACCESS_LOG_MAX)
    before = int_param(request, "before", 0, 2**62) or None
    rows = await deps.audit.for_patient(patient_id, limit, before)
    # Devices are in the log by reference (storage/device_refs.py): shown by id here.
    what = await device_refs.resolve(deps.pool, [row["resource"] for row in rows])
    clinicians = Clinicians(deps.pool, deps.keyring)
    names: dict[str, tuple[str, str | None]] = {}
    entries = []
    for row, resource in zip(rows, what, strict=True):
        actor = row["actor"]
        if actor not in names:
            names[actor] = await who_is(clinicians, actor, patient_id)
        who, rpps = names[actor]
        entries.append({"id": row["id"], "at": row["at"].isoformat(), "who": who, "rpps": rpps,
                        "actor": actor, "action": row["action"],
                        "what": resource, "outcome": row["outcome"]})
    if request.query.get("format") == "fhir":
        server = ("uri", f"{request.scheme}://{request.host}/fhir")
        events = [fhir.audit_event(f"audit-{row['id']}", int(row["at"].timestamp() * 1000),
                                   row["action"], row["outcome"], e["who"],
                                   f"Patient/{patient_id}", e["what"], rpps=e["rpps"],
                                   server=server, client=_client(row))
                  for row, e in zip(rows, entries, strict=True)]
        return web.json_response(fhir.bundle("collection", events),
                                 content_type="application/fhir+json")
    page: dict[str, Any] = {"entries": entries}
    if len(rows) == limit:
        page["next"] = f"/v1/me/access-log?limit={limit}&before={rows[-1]['id']}"
    return web.json_response(page)


def _client(row: Any) -> tuple[str, str] | None:
    """The AuditEvent network of an audit row's client: its IP address, when recorded."""
    return ("ip", row["client_address"]) if row["client_address"] else None


async def who_is(clinicians: Clinicians, actor: str, me: uuid.UUID) -> tuple[str, str | None]:
    """How the patient ``me`` is shown an audit row's actor: a name, and an RPPS number."""
    kind, _, ident = actor.partition(":")
    if kind == "clinician":
        found = await clinicians.by_id(uuid.UUID(ident))
        if found:
            return f"{found.display_name} ({found.profession})", found.rpps
    if kind == "patient":
        # Another patient appears only as a user of a scale shared with me.
        return ("you" if ident == str(me) else "another user of a shared device"), None
    if kind == "operator":
        return "a healthiot operator (refused messages of your devices)", None
    if actor == "service:record-feed":
        return "the feed to your medical record", None
    return actor, None


async def feed_status(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    status = await RecordFeed(deps.pool, deps.keyring).status(patient_id)
    return web.json_response({"enabled": status.enabled, "link": status.link,
                              "pending": status.pending, "sent": status.sent,
                              "refused": status.refused, "last_refusal": status.last_refusal})


async def feed_consent(request: web.Request) -> web.Response:
    """Turn the feed to my medical record on (my record must be linked: it says who I am
    there) or off (the link's tokens are revoked)."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    body = await read_body(request, FeedChoice)
    if body.enabled:
        link = await deps.record.links.get(patient_id) if deps.record else None
        if link is None or link.state != "linked":
            raise Problem(409, "link your medical record first (POST /v1/me/record-link)")
        await RecordFeed(deps.pool, deps.keyring).set_consent(patient_id, True)
    else:
        await record_link_routes.stop(request, patient_id)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                            action="consent", resource="record-feed",
                            outcome="granted" if body.enabled else "revoked",
                            client=request.remote)
    return await feed_status(request)
