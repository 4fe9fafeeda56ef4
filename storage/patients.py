"""Patient accounts: identity, password hash, sealed TOTP secret, and their data key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.errors import KeyUnavailable
from storage.keyring import Keyring

SECRETS_KEY = "secrets"


@dataclass(frozen=True, slots=True)
class Patient:
    id: uuid.UUID
    username: str
    password_hash: str
    totp_confirmed: bool = True


def _totp_aad(patient_id: uuid.UUID) -> bytes:
    return f"totp|{patient_id}".encode()


class Patients:
    """Create and find patients. The password hash is made by the caller (the API's job)."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def create(self, username: str, password_hash: str, totp_secret: bytes, *,
                     totp_confirmed: bool = True) -> Patient:
        """Create a patient with a fresh data key; raises asyncpg.UniqueViolationError when
        the username is taken. A self-registered account starts with its TOTP unconfirmed:
        no health data until a first code proves the authenticator works."""
        patient_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            # Sealed under the patient's own key, so that their erasure reaches it in old
            # dumps too (migration 112).
            await self._keyring.create(conn, str(patient_id))
            version, key = await self._keyring.current(conn, str(patient_id))
            await conn.execute(
                "INSERT INTO patients (id, username, password_hash, totp_sealed,"
                " totp_key_version) VALUES ($1, $2, $3, $4, $5)", patient_id, username,
                password_hash, seal(key, totp_secret, _totp_aad(patient_id)), version)
            if not totp_confirmed:
                await conn.execute(
                    "UPDATE patients SET totp_confirmed_at = NULL WHERE id = $1", patient_id)
        return Patient(patient_id, username, password_hash, totp_confirmed)

    async def by_username(self, username: str) -> Patient | None:
        row = await self._pool.fetchrow(
            "SELECT id, username, password_hash, totp_confirmed_at IS NOT NULL AS confirmed"
            " FROM patients WHERE username = $1", username)
        return Patient(row["id"], row["username"], row["password_hash"],
                       row["confirmed"]) if row else None

    async def by_id(self, patient_id: uuid.UUID) -> Patient | None:
        row = await self._pool.fetchrow(
            "SELECT id, username, password_hash, totp_confirmed_at IS NOT NULL AS confirmed"
            " FROM patients WHERE id = $1", patient_id)
        return Patient(row["id"], row["username"], row["password_hash"],
                       row["confirmed"]) if row else None

    async def accept_totp_step(self, patient_id: uuid.UUID, step: int) -> bool:
        """Record ``step`` as used (confirming enrolment on the first code); False when it,
        or a later one, was used already: a code works once."""
        done = await self._pool.fetchval(
            """UPDATE patients SET totp_last_step = $2,
                   totp_confirmed_at = coalesce(totp_confirmed_at, now())
               WHERE id = $1 AND totp_last_step < $2 RETURNING id""", patient_id, step)
        return done is not None

    async def totp_secret(self, patient_id: uuid.UUID) -> bytes:
        """The TOTP secret; KeyUnavailable once the patient is erased."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT totp_sealed, totp_key_version FROM patients WHERE id = $1", patient_id)
            if row is None:
                raise KeyUnavailable(f"no patient {patient_id}")
            if row["totp_key_version"] is None:  # an account from before migration 112
                _, key = await self._keyring.system_key(conn, SECRETS_KEY)
            else:
                key = await self._keyring.get(conn, str(patient_id), row["totp_key_version"])
        return open_sealed(key, row["totp_sealed"], _totp_aad(patient_id))

    async def update_password_hash(self, patient_id: uuid.UUID, password_hash: str) -> None:
        await self._pool.execute("UPDATE patients SET password_hash = $2 WHERE id = $1",
                                 patient_id, password_hash)
