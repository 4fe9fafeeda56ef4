"""The device registry: which devices exist, whose they are, and whether they may send."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
from cryptography import x509

from devices.errors import UnknownDevice
from devices.identity import MODELS


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    model: str
    patient_id: uuid.UUID | None
    state: str

    @property
    def may_send(self) -> bool:
        """Only a paired device's data belongs to someone and may be stored."""
        return self.state == "paired" and self.patient_id is not None


class Registry:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def register(self, device_id: str, *, model: str, serial: str, cert_pem: bytes,
                       patient_id: uuid.UUID | None, firmware_version: str | None = None,
                       ) -> Device:
        """Record a device and its certificate; paired at once when ``patient_id`` is given."""
        if model not in MODELS:
            raise ValueError(f"unknown device model {model!r}")
        cert = x509.load_pem_x509_certificate(cert_pem)
        state = "paired" if patient_id else "provisioned"
        await self._pool.execute(
            """INSERT INTO devices (id, model, serial, firmware_version, patient_id, state,
                                    cert_serial, cert_not_after)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            device_id, model, serial, firmware_version, patient_id, state,
            format(cert.serial_number, "x"), cert.not_valid_after_utc)
        return Device(device_id, model, patient_id, state)

    async def get(self, device_id: str) -> Device:
        found = await self.lookup([device_id])
        if device_id not in found:
            raise UnknownDevice(device_id)
        return found[device_id]

    async def lookup(self, device_ids: Iterable[str]) -> dict[str, Device]:
        """The registry rows of the given ids; unknown ids are simply absent."""
        rows = await self._pool.fetch(
            "SELECT id, model, patient_id, state FROM devices WHERE id = ANY($1::text[])",
            list(set(device_ids)))
        return {r["id"]: Device(r["id"], r["model"], r["patient_id"], r["state"]) for r in rows}

    async def last_seen(self, device_id: str) -> dt.datetime | None:
        value: dt.datetime | None = await self._pool.fetchval(
            "SELECT last_seen FROM devices WHERE id = $1", device_id)
        return value
