"""The device registry: which devices exist, whose they are, and whether they may send.

The life cycle (devices/lifecycle.py) is enforced here with the row locked, so two
concurrent changes cannot both pass the check; the database refuses any way back from
revoked or retired whoever writes, and revokes a device's certificates when it leaves
service (migration 030), which is what the CRL is built from.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
from cryptography import x509

from devices import pairing
from devices.errors import (
    CurrentCertificate,
    DuplicateDevice,
    PairingRefused,
    PairingThrottled,
    UnknownDevice,
)
from devices.identity import MODELS, is_device_id
from devices.lifecycle import check_transition

# Wrong pairing codes: per patient, a person's typos pass and a guesser is slowed; per
# device, a guesser spreading over many accounts is stopped. Neither ever locks for good:
# the window slides, so the real owner waits at most the window.
PATIENT_FAILURES = (10, dt.timedelta(minutes=15))
DEVICE_FAILURES = (50, dt.timedelta(hours=24))
MAX_SERIAL_LENGTH = 64
NO_MATCH = "this serial and pairing code do not match a device waiting to be paired"
_DUMMY_SALT = os.urandom(pairing.SALT_BYTES)


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    model: str
    patient_id: uuid.UUID | None  # the owner
    state: str
    shared: bool = False  # members joined it (a shared scale): readings need attributing

    @property
    def may_send(self) -> bool:
        """Only a paired device's data belongs to someone and may be stored."""
        return self.state == "paired" and self.patient_id is not None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the owner sees of a device."""

    id: str
    model: str
    serial: str
    state: str
    firmware_version: str | None
    last_seen: dt.datetime | None
    battery_percent: int | None
    battery_at: dt.datetime | None
    state_changed_at: dt.datetime | None
    role: str = "owner"  # or "member" of a shared scale


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str  # hex
    device_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    revocation_reason: str | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Registry:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def register(self, device_id: str, *, model: str, serial: str, cert_pem: bytes,
                       patient_id: uuid.UUID | None, firmware_version: str | None = None,
                       ) -> Device:
        """Record a device and its certificate; paired at once when ``patient_id`` is given
        (the demo fleet and tests); raises DuplicateDevice for a known id or serial."""
        if model not in MODELS:
            raise ValueError(f"unknown device model {model!r}")
        if not is_device_id(device_id):
            raise ValueError(f"{device_id!r} cannot name a device")
        if not serial or len(serial) > MAX_SERIAL_LENGTH:
            raise ValueError(f"a serial has 1 to {MAX_SERIAL_LENGTH} characters")
        cert = x509.load_pem_x509_certificate(cert_pem)
        state = "paired" if patient_id else "provisioned"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    """INSERT INTO devices (id, model, serial, firmware_version, patient_id,
                                            state, cert_serial, cert_not_after,
                                            state_changed_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())""",
                    device_id, model, serial, firmware_version, patient_id, state,
                    format(cert.serial_number, "x"), cert.not_valid_after_utc)
                await self._record_certificate(conn, device_id, cert)
        except asyncpg.UniqueViolationError:
            raise DuplicateDevice(f"a device {device_id} or a {model} with serial {serial!r} "
                                  "is already registered") from None
        return Device(device_id, model, patient_id, state)

    async def provision(self, device_id: str, *, model: str, serial: str, cert_pem: bytes,
                        firmware_version: str | None = None,
                        now: dt.datetime | None = None) -> tuple[Device, str]:
        """Register a device waiting for its owner, with a fresh pairing code. Returns the
        device and the code in clear, for the device to show: only its hash is kept."""
        now = now or _now()
        code = pairing.new_code()
        salt = os.urandom(pairing.SALT_BYTES)
        digest = await asyncio.to_thread(pairing.hash_code, code, salt)
        device = await self.register(device_id, model=model, serial=serial, cert_pem=cert_pem,
                                     patient_id=None, firmware_version=firmware_version)
        await self._pool.execute(
            "INSERT INTO device_pairing (device_id, salt, code_hash, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            device_id, salt, digest, now, now + pairing.PAIRING_CODE_VALIDITY)
        return device, code

    async def add_certificate(self, device_id: str, cert_pem: bytes) -> None:
        """Record a new certificate of a device (renewal) and make it the current one."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE devices SET cert_serial = $2, cert_not_after = $3 WHERE id = $1",
                device_id, format(cert.serial_number, "x"), cert.not_valid_after_utc)
            if done == "UPDATE 0":
                raise UnknownDevice(device_id)
            await self._record_certificate(conn, device_id, cert)

    @staticmethod
    async def _record_certificate(conn: asyncpg.Connection, device_id: str,
                                  cert: x509.Certificate) -> None:
        await conn.execute(
            "INSERT INTO device_certificates (serial, device_id, issued_at, expires_at)"
            " VALUES ($1, $2, $3, $4)",
            format(cert.serial_number, "x"), device_id, cert.not_valid_before_utc,
            cert.not_valid_after_utc)

    async def pair(self, patient_id: uuid.UUID, serial: str, code: str, *,
                   now: dt.datetime | None = None) -> Device:
        """Bind the device waiting with ``serial`` and showing ``code`` to the patient.

        Raises PairingThrottled past the attempt limits, PairingRefused when nothing
        matches (an unknown serial, a wrong, used or expired code: one answer, so serials
        cannot be probed). The code is used up by a success."""
        now = now or _now()
        await self.check_guesses(patient_id, now)
        rows = await self._pool.fetch(
            """SELECT d.id, p.salt, p.code_hash, p.expires_at
               FROM devices d JOIN device_pairing p ON p.device_id = d.id
               WHERE d.serial = $1 AND d.state = 'provisioned' AND p.used_at IS NULL""",
            serial[:MAX_SERIAL_LENGTH])
        if not rows:
            # As long as a real check: the time taken tells nothing about the serial.
            await asyncio.to_thread(pairing.matches, code, _DUMMY_SALT, b"")
            await self._failure(patient_id, None, now)
            raise PairingRefused(NO_MATCH)
        throttled: list[float] = []
        for row in rows:
            retry = await self._throttle(device_id=row["id"], now=now, limit=DEVICE_FAILURES)
            if retry is not None:
                throttled.append(retry)
                continue
            if not await asyncio.to_thread(pairing.matches, code, row["salt"],
                                           row["code_hash"]):
                continue
            if row["expires_at"] <= now:
                raise PairingRefused("this pairing code has expired: the device must be "
                                     "provisioned again")
            return await self._bind(row["id"], patient_id, now)
        if throttled and len(throttled) == len(rows):
            raise PairingThrottled("too many wrong codes for this device; try again later",
                                   min(throttled))
        for row in rows:
            await self._failure(patient_id, row["id"], now)
        raise PairingRefused(NO_MATCH)

    async def _bind(self, device_id: str, patient_id: uuid.UUID, now: dt.datetime) -> Device:
        async with self._pool.acquire() as conn, conn.transaction():
            # The conditional updates make the code single use even under a race.
            used = await conn.fetchval(
                "UPDATE device_pairing SET used_at = $2 WHERE device_id = $1"
                " AND used_at IS NULL RETURNING device_id", device_id, now)
            row = await conn.fetchrow(
                "UPDATE devices SET state = 'paired', patient_id = $2 WHERE id = $1"
                " AND state = 'provisioned' RETURNING id, model, patient_id, state",
                device_id, patient_id)
            if used is None or row is None:
                raise PairingRefused(NO_MATCH)
        return Device(row["id"], row["model"], row["patient_id"], row["state"])

    async def check_guesses(self, patient_id: uuid.UUID, now: dt.datetime) -> None:
        """Raise PairingThrottled when ``patient_id`` got too many device codes wrong
        lately (pairing and household invitation codes share the budget)."""
        retry = await self._throttle(patient_id=patient_id, now=now, limit=PATIENT_FAILURES)
        if retry is not None:
            raise PairingThrottled("too many wrong codes; try again later", retry)

    async def wrong_code(self, patient_id: uuid.UUID, now: dt.datetime) -> None:
        """Count a wrong device code typed by ``patient_id`` (see ``check_guesses``)."""
        await self._failure(patient_id, None, now)

    async def _throttle(self, *, now: dt.datetime, limit: tuple[int, dt.timedelta],
                        patient_id: uuid.UUID | None = None,
                        device_id: str | None = None) -> float | None:
        """Seconds to wait when the failures in the window reached the limit, else None."""
        count, window = limit
        column, value = ("patient_id", patient_id) if patient_id else ("device_id", device_id)
        row = await self._pool.fetchrow(
            f"SELECT count(*) AS n, min(at) AS first FROM device_pairing_failures"  # noqa: S608
            f" WHERE {column} = $1 AND at > $2", value, now - window)
        if row["n"] < count:
            return None
        return max(1.0, float((row["first"] + window - now).total_seconds()))

    async def _failure(self, patient_id: uuid.UUID, device_id: str | None,
                       now: dt.datetime) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO device_pairing_failures (at, patient_id, device_id)"
                " VALUES ($1, $2, $3)", now, patient_id, device_id)
            await conn.execute("DELETE FROM device_pairing_failures WHERE at < $1",
                               now - max(PATIENT_FAILURES[1], DEVICE_FAILURES[1]))

    async def transition(self, device_id: str, wanted: str, *,
                         patient_id: uuid.UUID | None = None) -> Device:
        """Move a device to ``wanted`` (revoked or retired; pairing goes through pair()).
        With ``patient_id``, only that patient's device: another's is UnknownDevice, as a
        device that does not exist. Raises InvalidTransition for a change the life cycle
        does not allow."""
        if wanted == "paired":
            raise ValueError("pairing binds a patient: use pair()")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, model, patient_id, state FROM devices WHERE id = $1 FOR UPDATE",
                device_id)
            if row is None or (patient_id is not None and row["patient_id"] != patient_id):
                raise UnknownDevice(device_id)
            check_transition(device_id, row["state"], wanted)
            await conn.execute("UPDATE devices SET state = $2 WHERE id = $1", device_id,
                               wanted)
        return Device(row["id"], row["model"], row["patient_id"], wanted)

    async def revoke(self, device_id: str, *, patient_id: uuid.UUID | None = None) -> Device:
        """Revoke a device (unpairing, loss, theft): its certificates are marked revoked
        and the bridge refuses its data from the next batch on."""
        return await self.transition(device_id, "revoked", patient_id=patient_id)

    async def revoke_certificate(self, device_id: str, serial: str, *,
                                 reason: str = "superseded") -> bool:
        """Revoke one of a device's earlier certificates (after a renewal); the device stays
        in service. Returns False when it was revoked already. Raises UnknownDevice for a
        serial that is not this device's, CurrentCertificate for the one it uses now."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT c.revoked_at, d.cert_serial FROM device_certificates c
                   JOIN devices d ON d.id = c.device_id
                   WHERE c.serial = $1 AND c.device_id = $2 FOR UPDATE OF c""",
                serial, device_id)
            if row is None:
                raise UnknownDevice(f"{device_id} has no certificate {serial}")
            if row["cert_serial"] == serial:
                raise CurrentCertificate(f"{serial} is {device_id}'s current certificate")
            if row["revoked_at"] is not None:
                return False
            await conn.execute(
                "UPDATE device_certificates SET revoked_at = now(), revocation_reason = $2"
                " WHERE serial = $1", serial, reason)
        return True

    async def get(self, device_id: str) -> Device:
        found = await self.lookup([device_id])
        if device_id not in found:
            raise UnknownDevice(device_id)
        return found[device_id]

    async def lookup(self, device_ids: Iterable[str]) -> dict[str, Device]:
        """The registry rows of the given ids; unknown ids are simply absent."""
        rows = await self._pool.fetch(
            """SELECT id, model, patient_id, state,
                      EXISTS (SELECT 1 FROM device_users u
                              WHERE u.device_id = d.id AND u.role = 'member') AS shared
               FROM devices d WHERE id = ANY($1::text[])""", list(set(device_ids)))
        return {r["id"]: Device(r["id"], r["model"], r["patient_id"], r["state"], r["shared"])
                for r in rows}

    async def users(self, device_ids: Iterable[str]) -> dict[str, list[uuid.UUID]]:
        """The patients who use each device (owner and members), by id."""
        rows = await self._pool.fetch(
            "SELECT device_id, patient_id FROM device_users WHERE device_id = ANY($1::text[])"
            " ORDER BY device_id, joined_at, patient_id", list(set(device_ids)))
        users: dict[str, list[uuid.UUID]] = {}
        for r in rows:
            users.setdefault(r["device_id"], []).append(r["patient_id"])
        return users

    async def for_patient(self, patient_id: uuid.UUID) -> list[DeviceInfo]:
        """The patient's devices, in the order they were added, in every state, and the
        shared scales they are a member of."""
        rows = await self._pool.fetch(
            """SELECT id, model, serial, state, firmware_version, last_seen, battery_percent,
                      battery_at, state_changed_at,
                      CASE WHEN patient_id = $1 THEN 'owner' ELSE 'member' END AS role
               FROM devices d WHERE patient_id = $1 OR EXISTS (
                   SELECT 1 FROM device_users u WHERE u.device_id = d.id
                   AND u.patient_id = $1 AND u.role = 'member')
               ORDER BY created_at, id""", patient_id)
        return [DeviceInfo(**dict(r)) for r in rows]

    async def certificates(self, device_id: str) -> list[CertificateRecord]:
        rows = await self._pool.fetch(
            """SELECT serial, device_id, issued_at, expires_at, revoked_at, revocation_reason
               FROM device_certificates WHERE device_id = $1 ORDER BY recorded_at""", device_id)
        return [CertificateRecord(**dict(r)) for r in rows]

    async def revoked_certificates(self, now: dt.datetime | None = None,
                                   ) -> list[tuple[int, dt.datetime]]:
        """(serial, revoked at) of every revoked certificate not yet expired: the CRL."""
        rows = await self._pool.fetch(
            """SELECT serial, revoked_at FROM device_certificates
               WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY revoked_at""",
            now or _now())
        return [(int(r["serial"], 16), r["revoked_at"]) for r in rows]

    async def last_seen(self, device_id: str) -> dt.datetime | None:
        value: dt.datetime | None = await self._pool.fetchval(
            "SELECT last_seen FROM devices WHERE id = $1", device_id)
        return value
