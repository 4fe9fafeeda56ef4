"""What the medical-record feed and the FHIR API say about a source device: its model,
serial number and owner, read from the device registry's table (read-only here)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    model: str
    serial: str
    patient_id: uuid.UUID | None


async def device_info(pool: asyncpg.Pool, device_ids: Sequence[str]) -> dict[str, DeviceInfo]:
    """The registered devices among ``device_ids``; an unknown source is left out."""
    rows = await pool.fetch(
        "SELECT id, model, serial, patient_id FROM devices WHERE id = ANY($1::text[])",
        list(device_ids))
    return {r["id"]: DeviceInfo(r["id"], r["model"], r["serial"], r["patient_id"])
            for r in rows}
