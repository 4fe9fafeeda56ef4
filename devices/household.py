"""Who uses a shared scale: its owner invites members with a one-time code.

The owner is the patient who paired the scale (devices.patient_id, mirrored in device_users
by migration 090). An invitation code is 16 characters of Crockford's base32 (80 random
bits), shown as ``XXXX-XXXX-XXXX-XXXX``, single use, valid INVITATION_VALIDITY; only its
SHA-256 is stored: at 80 bits an offline search is hopeless, and the hash is the index that
finds the invitation (a salted hash could not be looked up by code). Wrong codes count
against the same per-patient budget as wrong pairing codes (devices/registry.py), so
guessing is slowed without ever locking the real user out for long.

Only scales can be shared: other devices measure one person.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from devices.errors import HouseholdRefused, InvitationRefused, UnknownDevice
from devices.registry import Device, Registry

INVITATION_VALIDITY = dt.timedelta(hours=48)  # time to pass a code on within a household
MAX_USERS = 8  # past a household's size, telling people apart by weight is guesswork
CODE_LENGTH = 16
SHAREABLE_MODELS = frozenset({"scale"})
NO_INVITATION = "this code does not invite you to any device (unknown, used or expired)"
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_invitation_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, CODE_LENGTH, 4))


def invitation_hash(code: str) -> bytes | None:
    """SHA-256 of the canonical code (case, dashes, spaces and look-alikes forgiven), or
    None when ``code`` cannot be an invitation code."""
    cleaned = code.upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    if len(cleaned) != CODE_LENGTH or any(c not in _ALPHABET for c in cleaned):
        return None
    return hashlib.sha256(b"healthiot-invitation|" + cleaned.encode()).digest()


@dataclass(frozen=True, slots=True)
class DeviceUser:
    patient_id: uuid.UUID
    username: str
    role: str
    joined_at: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Household:
    def __init__(self, pool: asyncpg.Pool, registry: Registry) -> None:
        self._pool = pool
        self._registry = registry

    async def role(self, device_id: str, patient_id: uuid.UUID) -> str | None:
        """'owner' or 'member' of a paired device, None when the patient does not use it."""
        role: str | None = await self._pool.fetchval(
            "SELECT role FROM device_users WHERE device_id = $1 AND patient_id = $2",
            device_id, patient_id)
        return role

    async def _role_or_unknown(self, device_id: str, patient_id: uuid.UUID) -> str:
        role = await self.role(device_id, patient_id)
        if role is None:
            raise UnknownDevice(device_id)  # as a device that does not exist
        return role

    async def invite(self, device_id: str, owner_id: uuid.UUID,
                     now: dt.datetime | None = None) -> tuple[str, dt.datetime]:
        """A fresh invitation code to ``device_id`` and its expiry. Raises UnknownDevice
        when the patient does not use it, HouseholdRefused when they are not its owner, it
        is not a scale or its household is full."""
        now = now or _now()
        if await self._role_or_unknown(device_id, owner_id) != "owner":
            raise HouseholdRefused("only the owner of a device invites", forbidden=True)
        device = await self._registry.get(device_id)
        if device.model not in SHAREABLE_MODELS:
            raise HouseholdRefused(f"a {device.model} measures one person: only scales are "
                                   "shared")
        if len((await self._registry.users([device_id])).get(device_id, [])) >= MAX_USERS:
            raise HouseholdRefused(f"a device is shared by {MAX_USERS} people at most")
        code = new_invitation_code()
        expires = now + INVITATION_VALIDITY
        await self._pool.execute(
            "INSERT INTO device_invitations (code_hash, device_id, created_by, created_at,"
            " expires_at) VALUES ($1, $2, $3, $4, $5)",
            invitation_hash(code), device_id, owner_id, now, expires)
        return code, expires

    async def join(self, patient_id: uuid.UUID, code: str,
                   now: dt.datetime | None = None) -> Device:
        """Become a member of the device ``code`` invites to; the code is used up.

        Raises PairingThrottled past the wrong-code budget, InvitationRefused for a code
        that invites to nothing (unknown, used or expired), HouseholdRefused when the
        patient uses the device already or it is full (the code stays usable then)."""
        now = now or _now()
        await self._registry.check_guesses(patient_id, now)
        digest = invitation_hash(code)
        device_id = None
        if digest is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                # The conditional update makes the code single use even under a race.
                device_id = await conn.fetchval(
                    "UPDATE device_invitations SET used_at = $2, used_by = $3"
                    " WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2"
                    " RETURNING device_id", digest, now, patient_id)
                if device_id is not None:
                    return await self._add_member(conn, device_id, patient_id, now)
        await self._registry.wrong_code(patient_id, now)
        raise InvitationRefused(NO_INVITATION)

    async def _add_member(self, conn: asyncpg.Connection, device_id: str,
                          patient_id: uuid.UUID, now: dt.datetime) -> Device:
        # The device row locked: two joins at once cannot both take the last place.
        row = await conn.fetchrow(
            "SELECT id, model, patient_id, state FROM devices WHERE id = $1 FOR UPDATE",
            device_id)
        users = await conn.fetch("SELECT patient_id FROM device_users WHERE device_id = $1",
                                 device_id)
        if any(u["patient_id"] == patient_id for u in users):
            raise HouseholdRefused("you use this device already")
        if len(users) >= MAX_USERS:
            raise HouseholdRefused(f"a device is shared by {MAX_USERS} people at most")
        await conn.execute(
            "INSERT INTO device_users (device_id, patient_id, role, joined_at)"
            " VALUES ($1, $2, 'member', $3)", device_id, patient_id, now)
        return Device(row["id"], row["model"], row["patient_id"], row["state"], shared=True)

    async def users(self, device_id: str, patient_id: uuid.UUID) -> list[DeviceUser]:
        """Who uses the device, owner first; UnknownDevice unless ``patient_id`` does."""
        await self._role_or_unknown(device_id, patient_id)
        rows = await self._pool.fetch(
            """SELECT u.patient_id, p.username, u.role, u.joined_at
               FROM device_users u JOIN patients p ON p.id = u.patient_id
               WHERE u.device_id = $1 ORDER BY u.role = 'member', u.joined_at, p.username""",
            device_id)
        return [DeviceUser(**dict(r)) for r in rows]

    async def remove(self, device_id: str, actor_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """The owner removes a member, or a member leaves (``user_id == actor_id``).

        Raises UnknownDevice when the actor does not use the device or the user is not a
        member of it, HouseholdRefused when a member removes someone else or the owner
        removes themself (the owner unpairs the device instead)."""
        role = await self._role_or_unknown(device_id, actor_id)
        if user_id == actor_id and role == "owner":
            raise HouseholdRefused("the owner does not leave a device: unpair it instead")
        if user_id != actor_id and role != "owner":
            raise HouseholdRefused("only the owner of a device removes its users",
                                   forbidden=True)
        # The trigger of migration 090 removes held weighings nobody left would see.
        done = await self._pool.execute(
            "DELETE FROM device_users WHERE device_id = $1 AND patient_id = $2"
            " AND role = 'member'", device_id, user_id)
        if done == "DELETE 0":
            raise UnknownDevice(f"{device_id} has no member {user_id}")
