"""Shared scales: the owner invites, members join and leave, and the users of a scale claim
or dismiss the weighings the bridge could not attribute.

Every route needs the second factor and is audited. A device the caller does not use answers
as one that does not exist (404); a member attempting what only the owner may do gets 403.
Held weighings may be any user's data, so every access to them is written to the access log
of each user of the scale, not only the caller's: each sees who looked, claimed or joined.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from aiohttp import web

from api.bodies import MAX_INVITATION_CODE_LENGTH, Invitation
from api.device_routes import device_json
from api.problems import Problem, problem_response
from api.requests import DEPS, ApiDeps, bearer_claims, patient_of, read_body, uuid_param
from devices.errors import HouseholdRefused, InvitationRefused, PairingThrottled, UnknownDevice
from devices.household import Household
from devices.identity import is_device_id
from storage.maintenance import RetentionPolicy
from storage.unclaimed import HeldReading, Unclaimed
from vitals.catalogue import METRICS

MAX_CODE_LENGTH = MAX_INVITATION_CODE_LENGTH
HELD_FOR = dt.timedelta(days=RetentionPolicy().unclaimed_days)
NO_DEVICE = "no such device"


def register(app: web.Application) -> None:
    app.router.add_post("/v1/me/devices/join", join)
    app.router.add_post("/v1/me/devices/{device_id}/invitations", invite)
    app.router.add_get("/v1/me/devices/{device_id}/users", list_users)
    app.router.add_delete("/v1/me/devices/{device_id}/users/{user}", remove_user)
    app.router.add_get("/v1/me/devices/{device_id}/unclaimed", list_unclaimed)
    app.router.add_post("/v1/me/devices/{device_id}/unclaimed/{reading_id}/claim", claim)
    app.router.add_post("/v1/me/devices/{device_id}/unclaimed/{reading_id}/dismiss", dismiss)


def held_json(r: HeldReading) -> dict[str, Any]:
    return {"id": str(r.id), "device_id": r.device_id, "measured_at": r.measured_at.isoformat(),
            "held_at": r.held_at.isoformat(), "expires_at": (r.held_at + HELD_FOR).isoformat(),
            "reason": r.reason,
            "values": {m: {"value": v, "unit": METRICS[m].unit}
                       for m, (v, _) in sorted(r.values.items())}}


def _caller(request: web.Request) -> tuple[ApiDeps, uuid.UUID, str]:
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    device_id = request.match_info.get("device_id", "")
    if device_id and not is_device_id(device_id):
        raise Problem(404, NO_DEVICE)
    return deps, patient_id, device_id


async def _record(deps: ApiDeps, client: str | None, actor: uuid.UUID,
                  patients: list[uuid.UUID], action: str, resource: str, outcome: str) -> None:
    """One audit event in the access log of each of ``patients``; ``client``: the
    request's network address."""
    for patient_id in dict.fromkeys(patients):
        await deps.audit.record(client=client, actor=f"patient:{actor}", patient_id=patient_id,
                                action=action, resource=resource, outcome=outcome)


async def _users(deps: ApiDeps, device_id: str) -> list[uuid.UUID]:
    return (await deps.registry.users([device_id])).get(device_id, [])


async def _refused(deps: ApiDeps, peer: str | None, patient_id: uuid.UUID, resource: str,
                   exc: UnknownDevice | HouseholdRefused) -> Problem:
    await _record(deps, peer, patient_id, [patient_id], "device", resource, "refused")
    if isinstance(exc, UnknownDevice):
        return Problem(404, NO_DEVICE)
    return Problem(403 if exc.forbidden else 409, str(exc))


async def invite(request: web.Request) -> web.Response:
    """A one-time code, for the owner to pass on to a member of the household."""
    deps, patient_id, device_id = _caller(request)
    resource = f"device/{device_id}/invitations"
    try:
        code, expires = await Household(deps.pool, deps.registry).invite(device_id, patient_id)
    except (UnknownDevice, HouseholdRefused) as exc:
        raise await _refused(deps, request.remote, patient_id, resource, exc) from None
    await _record(deps, request.remote, patient_id, [patient_id], "device", resource, "invited")
    return web.json_response({"device_id": device_id, "code": code,
                              "expires_at": expires.isoformat()}, status=201)


async def join(request: web.Request) -> web.Response:
    """Use an invitation code: the scale becomes one of mine, as a member."""
    deps, patient_id, _ = _caller(request)
    body = await read_body(request, Invitation)  # a code of at most MAX_CODE_LENGTH
    try:
        device = await Household(deps.pool, deps.registry).join(patient_id, body.code)
    except PairingThrottled as exc:
        await _record(deps, request.remote, patient_id, [patient_id],
                      "device", "devices/join", "throttled")
        return problem_response(429, str(exc), headers={
            "Retry-After": str(int(exc.retry_after_s + 0.999))})
    except InvitationRefused as exc:
        await _record(deps, request.remote, patient_id, [patient_id],
                      "device", "devices/join", "refused")
        raise Problem(422, str(exc)) from None
    except HouseholdRefused as exc:
        await _record(deps, request.remote, patient_id, [patient_id],
                      "device", "devices/join", "refused")
        raise Problem(409, str(exc)) from None
    # The owner and the other members see who joined their scale.
    await _record(deps, request.remote, patient_id, await _users(deps, device.id), "device",
                  f"device/{device.id}/users", "joined")
    mine = {d.id: d for d in await deps.registry.for_patient(patient_id)}
    return web.json_response(device_json(mine[device.id]), status=201)


async def list_users(request: web.Request) -> web.Response:
    """Who uses this scale: the owner, then the members."""
    deps, patient_id, device_id = _caller(request)
    resource = f"device/{device_id}/users"
    try:
        users = await Household(deps.pool, deps.registry).users(device_id, patient_id)
    except UnknownDevice as exc:
        raise await _refused(deps, request.remote, patient_id, resource, exc) from None
    await _record(deps, request.remote, patient_id, [patient_id], "read", resource, "ok")
    return web.json_response({"users": [
        {"patient_id": str(u.patient_id), "username": u.username, "role": u.role,
         "joined_at": u.joined_at.isoformat(), "me": u.patient_id == patient_id}
        for u in users]})


async def remove_user(request: web.Request) -> web.Response:
    """The owner removes a member (a patient id), or a member leaves ("me")."""
    deps, patient_id, device_id = _caller(request)
    user = patient_id if request.match_info["user"] == "me" else uuid_param(request, "user")
    resource = f"device/{device_id}/users/{user}"
    users = await _users(deps, device_id)
    try:
        await Household(deps.pool, deps.registry).remove(device_id, patient_id, user)
    except (UnknownDevice, HouseholdRefused) as exc:
        raise await _refused(deps, request.remote, patient_id, resource, exc) from None
    # Everyone who used the scale, the one who left included, sees the change.
    await _record(deps, request.remote, patient_id, users, "device", resource,
                  "left" if user == patient_id else "removed")
    return web.Response(status=204)


async def _require_user(deps: ApiDeps, peer: str | None, patient_id: uuid.UUID,
                        device_id: str, resource: str) -> list[uuid.UUID]:
    """The device's users, or 404 (audited) when the caller is not one of them."""
    users = await _users(deps, device_id)
    if patient_id not in users:
        raise await _refused(deps, peer, patient_id, resource, UnknownDevice(device_id))
    return users


async def list_unclaimed(request: web.Request) -> web.Response:
    """The weighings held on this scale that I have not dismissed."""
    deps, patient_id, device_id = _caller(request)
    resource = f"device/{device_id}/unclaimed"
    users = await _require_user(deps, request.remote, patient_id, device_id, resource)
    held = await Unclaimed(deps.pool, deps.keyring, deps.store).visible(device_id, patient_id)
    await _record(deps, request.remote, patient_id, users, "read", resource, "ok")
    return web.json_response({"readings": [held_json(r) for r in held]})


async def claim(request: web.Request) -> web.Response:
    """"This one is mine": the weighing becomes my data and leaves the others' lists."""
    deps, patient_id, device_id = _caller(request)
    reading_id = uuid_param(request, "reading_id")
    resource = f"device/{device_id}/unclaimed/{reading_id}"
    users = await _require_user(deps, request.remote, patient_id, device_id, resource)
    reading = await Unclaimed(deps.pool, deps.keyring, deps.store).claim(
        device_id, reading_id, patient_id)
    if reading is None:
        await _record(deps, request.remote, patient_id, [patient_id], "claim", resource, "refused")
        raise Problem(404, "no such held weighing")
    await _record(deps, request.remote, patient_id, users, "claim", resource, "ok")
    return web.json_response(held_json(reading))


async def dismiss(request: web.Request) -> web.Response:
    """"Not mine": hidden from my list; removed once every user has said so."""
    deps, patient_id, device_id = _caller(request)
    reading_id = uuid_param(request, "reading_id")
    resource = f"device/{device_id}/unclaimed/{reading_id}"
    await _require_user(deps, request.remote, patient_id, device_id, resource)
    done = await Unclaimed(deps.pool, deps.keyring, deps.store).dismiss(
        device_id, reading_id, patient_id)
    await _record(deps, request.remote, patient_id, [patient_id], "dismiss", resource,
                  "ok" if done else "refused")
    if not done:
        raise Problem(404, "no such held weighing")
    return web.Response(status=204)
