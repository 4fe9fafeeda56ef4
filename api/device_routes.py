"""My devices: pair one with its serial and the code it shows, list them (with my role:
owner, or member of a shared scale, api/household_routes.py), unpair one.

Every route needs the second factor (a device's state and last contact say when a person
was measured) and writes an audit event. Another patient's device answers as a device that
does not exist (404), and pairing failures all read alike, so neither ids nor serials can
be probed. Unpairing revokes: the device cannot connect again and what it still sends is
quarantined, not stored.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.bodies import MAX_PAIRING_CODE_LENGTH, Pairing
from api.problems import Problem, problem_response
from api.requests import DEPS, bearer_claims, patient_of, read_body
from devices.errors import InvalidTransition, PairingRefused, PairingThrottled, UnknownDevice
from devices.identity import is_device_id
from devices.registry import MAX_SERIAL_LENGTH, DeviceInfo
from devices.revocation import Revoker
from storage.erasure import device_key_owners

REVOKER = web.AppKey("revoker", Revoker)
MAX_CODE_LENGTH = MAX_PAIRING_CODE_LENGTH


def register(app: web.Application) -> None:
    app.router.add_post("/v1/me/devices/pair", pair)
    app.router.add_get("/v1/me/devices", list_devices)
    app.router.add_delete("/v1/me/devices/{device_id}", unpair)


def device_json(d: DeviceInfo) -> dict[str, Any]:
    return {"id": d.id, "model": d.model, "serial": d.serial, "state": d.state, "role": d.role,
            "firmware_version": d.firmware_version,
            "last_seen": d.last_seen.isoformat() if d.last_seen else None,
            "battery": None if d.battery_percent is None else {
                "percent": d.battery_percent,
                "at": d.battery_at.isoformat() if d.battery_at else None},
            "state_changed_at": d.state_changed_at.isoformat() if d.state_changed_at else None}


async def pair(request: web.Request) -> web.Response:
    """Claim a device: its serial and the pairing code it shows; it becomes mine."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    body = await read_body(request, Pairing)
    serial, code = body.serial.strip(), body.pairing_code
    if not 0 < len(serial) <= MAX_SERIAL_LENGTH or len(code) > MAX_CODE_LENGTH:
        raise Problem(422, f"a serial has 1 to {MAX_SERIAL_LENGTH} characters, a code at "
                           f"most {MAX_CODE_LENGTH}")
    actor = f"patient:{patient_id}"
    try:
        device = await deps.registry.pair(patient_id, serial, code)
    except PairingThrottled as exc:
        await deps.audit.record(actor=actor, patient_id=patient_id, action="device",
                                resource="devices/pair", outcome="throttled", client=request.remote)
        return problem_response(429, str(exc), headers={
            "Retry-After": str(int(exc.retry_after_s + 0.999))})
    except PairingRefused as exc:
        await deps.audit.record(actor=actor, patient_id=patient_id, action="device",
                                resource="devices/pair", outcome="refused", client=request.remote)
        raise Problem(422, str(exc)) from None
    await deps.audit.record(actor=actor, patient_id=patient_id, action="device",
                            resource=f"device/{device.id}", outcome="paired", client=request.remote)
    mine = {d.id: d for d in await deps.registry.for_patient(patient_id)}
    return web.json_response(device_json(mine[device.id]), status=201)


async def list_devices(request: web.Request) -> web.Response:
    """My devices in every state, with last contact and battery when known."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    devices = await deps.registry.for_patient(patient_id)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="read",
                            resource="devices", outcome="ok", client=request.remote)
    return web.json_response({"devices": [device_json(d) for d in devices]})


async def unpair(request: web.Request) -> web.Response:
    """Unpair one of my devices: its certificate is revoked, for good."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    device_id = request.match_info["device_id"]
    if not is_device_id(device_id):
        raise Problem(404, "no such device")
    actor = f"patient:{patient_id}"
    try:
        await request.app[REVOKER].revoke(device_id, patient_id=patient_id)
    except UnknownDevice:
        raise Problem(404, "no such device") from None
    except InvalidTransition as exc:
        await deps.audit.record(actor=actor, patient_id=patient_id, action="device",
                                resource=f"device/{device_id}", outcome="refused",
                                client=request.remote)
        raise Problem(409, f"this device is already {exc.current}") from None
    # A shared scale's held weighings and the device's quarantine went with it (migrations
    # 090, 110); the secret halves of their keys go too, so that no copy opens again.
    for owner in device_key_owners(device_id):
        deps.keyring.forget(owner)
    await deps.audit.record(actor=actor, patient_id=patient_id, action="device",
                            resource=f"device/{device_id}", outcome="revoked",
                            client=request.remote)
    return web.Response(status=204)
