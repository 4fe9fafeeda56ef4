"""Clinician accounts: password + TOTP ones made by an administrator, and ones created on a
first sign-in through the identity provider (which vouches for the RPPS number)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.keyring import Keyring
from storage.patients import SECRETS_KEY
from vitals.rpps import validate_profession, validate_rpps


@dataclass(frozen=True, slots=True)
class Clinician:
    id: uuid.UUID
    rpps: str
    profession: str
    display_name: str
    password_hash: str | None


def _totp_aad(clinician_id: uuid.UUID) -> bytes:
    return f"totp|clinician|{clinician_id}".encode()


def _row(row: asyncpg.Record) -> Clinician:
    return Clinician(row["id"], row["rpps"], row["profession"], row["display_name"],
                     row["password_hash"])


_COLUMNS = "id, rpps, profession, display_name, password_hash"


class Clinicians:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def create(self, *, rpps: str, profession: str, display_name: str,
                     username: str, password_hash: str, totp_secret: bytes) -> Clinician:
        """A password + TOTP account; raises InvalidProfessional for a bad RPPS number or a
        profession not bound by medical secrecy, UniqueViolationError for a duplicate."""
        validate_rpps(rpps)
        validate_profession(profession)
        clinician_id = uuid.uuid4()
        async with self._pool.acquire() as conn:
            _, key = await self._keyring.system_key(conn, SECRETS_KEY)
            await conn.execute(
                """INSERT INTO clinicians (id, rpps, profession, display_name, username,
                                           password_hash, totp_sealed)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                clinician_id, rpps, profession, display_name, username, password_hash,
                seal(key, totp_secret, _totp_aad(clinician_id)))
        return Clinician(clinician_id, rpps, profession, display_name, password_hash)

    async def from_identity_provider(self, *, subject: str, rpps: str, profession: str,
                                     display_name: str) -> Clinician:
        """The account bound to the provider's ``subject``, created on first sign-in."""
        validate_rpps(rpps)
        validate_profession(profession)
        row = await self._pool.fetchrow(
            f"""INSERT INTO clinicians (id, rpps, profession, display_name, oidc_subject)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (oidc_subject) DO UPDATE SET profession = $3, display_name = $4
                RETURNING {_COLUMNS}""",  # noqa: S608 (constant column list)
            uuid.uuid4(), rpps, profession, display_name, subject)
        return _row(row)

    async def by_username(self, username: str) -> Clinician | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM clinicians WHERE username = $1",  # noqa: S608
            username)
        return _row(row) if row else None

    async def by_id(self, clinician_id: uuid.UUID) -> Clinician | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM clinicians WHERE id = $1", clinician_id)  # noqa: S608
        return _row(row) if row else None

    async def by_rpps(self, rpps: str) -> Clinician | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM clinicians WHERE rpps = $1", rpps)  # noqa: S608
        return _row(row) if row else None

    async def accept_totp_step(self, clinician_id: uuid.UUID, step: int) -> bool:
        """Record ``step`` as used; False when it (or a later one) was used already."""
        done = await self._pool.fetchval(
            "UPDATE clinicians SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2"
            " RETURNING id", clinician_id, step)
        return done is not None

    async def totp_secret(self, clinician_id: uuid.UUID) -> bytes:
        async with self._pool.acquire() as conn:
            sealed = await conn.fetchval("SELECT totp_sealed FROM clinicians WHERE id = $1",
                                         clinician_id)
            _, key = await self._keyring.system_key(conn, SECRETS_KEY)
        return open_sealed(key, sealed, _totp_aad(clinician_id))
