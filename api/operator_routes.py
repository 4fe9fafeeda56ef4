"""Operator routes (issue 22): sign-in with password and code, and the refusals (quarantine
records) per device and reason over a period.

An operator is neither a patient nor a clinician: tokens of theirs are refused here (403),
and an operator's token is refused on their routes. The listing shows when, which device,
which reason and the detail (counts and reason codes, never a value). Payloads can hold
health values: only the ``operator-values`` role may ask for them (``include=payload``), and
asking without it is refused and audited. Every access is audited: one row for the
operator's query, and one per patient whose device's records it returned, which that
patient sees in their access log.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

from aiohttp import web

from api.account_routes import staff_login
from api.bodies import OperatorLogin
from api.problems import Problem
from api.requests import (
    DEPS,
    OPERATOR_SUBJECT,
    bearer_claims,
    int_param,
    operator_of,
    read_body,
    time_param,
)
from storage.operators import OperatorAccount, Operators
from storage.quarantine import count_refusals, open_payloads, refusals_between

DEFAULT_PERIOD = dt.timedelta(days=1)  # "what did this device send wrong today"
MAX_PERIOD = dt.timedelta(days=366)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
NO_PAYLOADS = "your role does not permit opening payloads, which can hold health values"


def register(app: web.Application) -> None:
    app.router.add_post("/v1/operators/login", login)
    app.router.add_get("/v1/operator/refusals", refusals)


async def login(request: web.Request) -> web.Response:
    """Password and one-time code, both required: an operator has no one-factor session."""
    deps = request.app[DEPS]
    body = await read_body(request, OperatorLogin)
    return await staff_login(request, OPERATOR_SUBJECT, Operators(deps.pool, deps.keyring),
                             body.username, body.password, body.totp)


async def _operator(request: web.Request) -> OperatorAccount:
    """The calling operator, as the database says now (a role changed or an account
    removed takes effect at the next request)."""
    deps = request.app[DEPS]
    operator_id = operator_of(bearer_claims(request, health_data=True))
    found = await Operators(deps.pool, deps.keyring).by_id(operator_id)
    if found is None:
        raise Problem(401, "this operator account no longer exists")
    return found


def _period(request: web.Request) -> tuple[dt.datetime, dt.datetime]:
    end = time_param(request, "to", dt.datetime.now(dt.UTC))
    start = time_param(request, "from", end - DEFAULT_PERIOD)
    if not start < end <= start + MAX_PERIOD:
        raise Problem(400, "from must be before to, at most a year apart")
    return start, end


async def refusals(request: web.Request) -> web.Response:
    """Refusals received in [from, to) (default: the last day), newest first, of one
    device and one reason when given, with the count per device and reason."""
    deps = request.app[DEPS]
    operator = await _operator(request)
    start, end = _period(request)
    device = request.query.get("device")
    reason = request.query.get("reason")
    limit = int_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    include = request.query.get("include")
    if include not in (None, "payload"):
        raise Problem(400, "include is payload or absent")
    actor = f"operator:{operator.id}"
    # A read either way (BALP PatientRead in the patient's FHIR access log); what was read
    # is in the resource: refusals, or refusals with their payloads.
    suffix = "/payloads" if include else ""
    resource = (f"quarantine/device/{device}" if device else "quarantine") + suffix
    if include and not operator.may_open_payloads:
        await deps.audit.record(actor=actor, patient_id=None, action="read",
                                resource=resource, outcome="refused", client=request.remote)
        raise Problem(403, NO_PAYLOADS)
    rows = await refusals_between(deps.pool, start, end, device_id=device, reason=reason,
                                  limit=limit)
    counts = await count_refusals(deps.pool, start, end, device_id=device, reason=reason)
    # Audited before anything is answered: an access the log misses must not happen.
    await deps.audit.record(actor=actor, patient_id=None, action="read", resource=resource,
                            outcome="ok", client=request.remote)
    for patient_id, device_id in await _whose(request, {r.device_id for r in rows
                                                        if r.device_id}):
        await deps.audit.record(actor=actor, patient_id=patient_id, action="read",
                                resource=f"device/{device_id}/refusals{suffix}", outcome="ok",
                                client=request.remote)
    payloads = (await open_payloads(deps.pool, deps.keyring, [r.id for r in rows])
                if include else {})
    listed: list[dict[str, Any]] = []
    for r in rows:
        item: dict[str, Any] = {"id": r.id, "received_at": r.received_at.isoformat(),
                                "device_id": r.device_id, "topic": r.topic,
                                "reason": r.reason, "detail": r.detail}
        if include:
            payload = payloads.get(r.id)
            item["payload"] = None if payload is None else base64.b64encode(payload).decode()
        listed.append(item)
    return web.json_response({
        "from": start.isoformat(), "to": end.isoformat(), "device": device,
        "reason": reason, "refusals": listed,
        "counts": [{"device_id": c.device_id, "reason": c.reason, "count": c.count}
                   for c in counts],
        "truncated": sum(c.count for c in counts) > len(rows)})


async def _whose(request: web.Request, device_ids: set[str]
                 ) -> list[tuple[uuid.UUID, str]]:
    """(patient, device) for each person a listed device measures: its owner and the
    users of a shared scale."""
    registry = request.app[DEPS].registry
    found = await registry.lookup(device_ids)
    users = await registry.users(device_ids)
    pairs: set[tuple[uuid.UUID, str]] = set()
    for device_id in device_ids:
        device = found.get(device_id)
        if device is not None and device.patient_id is not None:
            pairs.add((device.patient_id, device_id))
        pairs.update((p, device_id) for p in users.get(device_id, []))
    return sorted(pairs, key=lambda pair: (str(pair[0]), pair[1]))
