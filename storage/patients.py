"""Patient accounts: identity, password hash, sealed TOTP secret, and their data key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.keyring import Keyring

SECRETS_KEY = "secrets"


@dataclass(frozen=True, slots=True)
class Patient:
    id: uuid.UUID
    username: str
    password_hash: str


def _totp_aad(patient_id: uuid.UUID) -> bytes:
    return f"totp|{patient_id}".encode()


class Patients:
    """Create and find patients. The password hash is made by the caller (the API's job)."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def create(self, username: str, password_hash: str, totp_secret: bytes) -> Patient:
        """Create a patient with a fresh data key; raises asyncpg.UniqueViolationError when
        the username is taken."""
        patient_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            _, key = await self._keyring.system_key(conn, SECRETS_KEY)
            await conn.execute(
                "INSERT INTO patients (id, username, password_hash, totp_sealed)"
                " VALUES ($1, $2, $3, $4)", patient_id, username, password_hash,
                seal(key, totp_secret, _totp_aad(patient_id)))
            await self._keyring.create(conn, str(patient_id))
        return Patient(patient_id, username, password_hash)

    async def by_username(self, username: str) -> Patient | None:
        row = await self._pool.fetchrow(
            "SELECT id, username, password_hash FROM patients WHERE username = $1", username)
        return Patient(row["id"], row["username"], row["password_hash"]) if row else None

    async def totp_secret(self, patient_id: uuid.UUID) -> bytes:
        async with self._pool.acquire() as conn:
            sealed = await conn.fetchval("SELECT totp_sealed FROM patients WHERE id = $1",
                                         patient_id)
            _, key = await self._keyring.system_key(conn, SECRETS_KEY)
        return open_sealed(key, sealed, _totp_aad(patient_id))

    async def update_password_hash(self, patient_id: uuid.UUID, password_hash: str) -> None:
        await self._pool.execute("UPDATE patients SET password_hash = $2 WHERE id = $1",
                                 patient_id, password_hash)
