"""The patient's link to their medical record and the feed's state, as the app sees them.

POST /v1/me/record-link answers the record's sign-in URL; the record sends the browser back
to GET /v1/record-link/callback (our registered redirect URI) with a code, which completes
the link. DELETE /v1/me/record-link, or turning the feed off, revokes the tokens at the
record. GET /v1/me/record-feed/readings lists what was sent, refused (and why) or pending.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from api.problems import Problem
from api.record_auth import LinkRefused, RecordAccount, RecordAuthError
from api.requests import DEPS, bearer_claims, patient_of
from storage.record_feed import RecordFeed

READINGS_MAX = 200


def register(app: web.Application) -> None:
    app.router.add_post("/v1/me/record-link", begin_link)
    app.router.add_delete("/v1/me/record-link", unlink)
    app.router.add_get("/v1/record-link/callback", callback)
    app.router.add_get("/v1/me/record-feed/readings", readings)


def account(request: web.Request) -> RecordAccount:
    found = request.app[DEPS].record
    if found is None:
        raise Problem(404, "this service has no medical-record feed configured")
    return found


async def begin_link(request: web.Request) -> web.Response:
    patient_id = patient_of(bearer_claims(request, health_data=True))
    try:
        url = await account(request).begin(patient_id)
    except RecordAuthError:
        raise Problem(503, "the medical record cannot be reached; try again later") from None
    return web.json_response({"authorization_url": url})


async def callback(request: web.Request) -> web.Response:
    """Where the record sends the patient back. The state parameter, single use and
    short-lived, is what binds this request to the patient who started the link."""
    if request.query.get("error"):
        raise Problem(400, "the link to the medical record was not authorised")
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not state or not code:
        raise Problem(400, "state and code are required")
    deps = request.app[DEPS]
    try:
        patient_id = await account(request).complete(state, code)
    except LinkRefused:
        raise Problem(400, "this sign-in cannot complete; start the link again") from None
    except RecordAuthError:
        raise Problem(503, "the medical record cannot be reached; try again later") from None
    await RecordFeed(deps.pool, deps.keyring).wake(patient_id)  # readings waiting for it
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="consent",
                            resource="record-link", outcome="granted", client=request.remote)
    return web.json_response({"linked": True})


async def stop(request: web.Request, patient_id: uuid.UUID) -> None:
    """Turn the feed off and revoke the tokens at the record."""
    deps = request.app[DEPS]
    await RecordFeed(deps.pool, deps.keyring).set_consent(patient_id, False)
    if deps.record is not None and await deps.record.unlink(patient_id):
        await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id,
                                action="consent", resource="record-link", outcome="revoked",
                                client=request.remote)


async def unlink(request: web.Request) -> web.Response:
    patient_id = patient_of(bearer_claims(request, health_data=True))
    account(request)
    await stop(request, patient_id)
    return web.Response(status=204)


async def readings(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    rows = await RecordFeed(deps.pool, deps.keyring).readings(patient_id, READINGS_MAX)
    return web.json_response({"readings": rows})
