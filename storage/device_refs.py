"""Devices in the audit log by reference, not by id.

An audit resource such as ``device/<id>/users`` or ``fhir/Device/<id>`` would tie the
device to the patient of that row for as long as the log is kept (years), and the log is
append-only: it cannot be edited at erasure. So the device id is replaced, before the row
is written and hashed, by the device's ``audit_ref`` (migration 110), a random value that
erasure replaces: from then on no table maps the old reference to the device.
"""

from __future__ import annotations

import re

import asyncpg

# A device segment of a resource path: after "device/" or "Device/" at the start or after
# a slash ("devices/pair" is a collection, not a device).
DEVICE_SEGMENT = re.compile(r"(?:^|(?<=/))(?P<kind>[dD]evice)/(?P<id>[^/]+)")


def _replace(resource: str, names: dict[str, str]) -> str:
    """``resource`` with each device segment found in ``names`` replaced by its value."""
    return DEVICE_SEGMENT.sub(
        lambda m: f"{m.group('kind')}/{names.get(m.group('id'), m.group('id'))}", resource)


async def pseudonymise(conn: asyncpg.Connection, resource: str) -> str:
    """``resource`` with each registered device id replaced by its audit reference; an id
    the registry does not know is left as it is (it names no one)."""
    ids = [m.group("id") for m in DEVICE_SEGMENT.finditer(resource)]
    if not ids:
        return resource
    refs = {r["id"]: r["audit_ref"] for r in await conn.fetch(
        "SELECT id, audit_ref FROM devices WHERE id = ANY($1::text[])", ids)}
    return _replace(resource, refs)


async def resolve(pool: asyncpg.Pool, resources: list[str]) -> list[str]:
    """``resources`` as a patient reads them in their access log: each reference of a
    device that still has it back to the device's id. A reference erasure replaced stays as
    it is: it names no device any more."""
    refs = {m.group("id") for r in resources for m in DEVICE_SEGMENT.finditer(r)}
    if not refs:
        return resources
    ids = {r["audit_ref"]: r["id"] for r in await pool.fetch(
        "SELECT id, audit_ref FROM devices WHERE audit_ref = ANY($1::text[])", list(refs))}
    return [_replace(r, ids) for r in resources]
