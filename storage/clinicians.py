"""Clinician accounts: password + TOTP ones made by an administrator, and ones created on a
first sign-in through the identity provider (which vouches for the RPPS number)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.errors import IdentityConflict
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
        """The account bound to the provider's ``subject``, found, linked or created.

        - ``subject`` already bound: that account (profession and name refreshed), as long
          as the provider still vouches for the same RPPS number.
        - an account with this RPPS number and no subject yet (made by an administrator):
          the provider vouches for the number, so the subject is linked to that account and
          its consents keep working.
        - neither: a new account.

        Raises InvalidProfessional for a bad RPPS number or profession, IdentityConflict
        when the number belongs to an account bound to another subject, or the subject to
        an account with another number: a person cannot silently take over an account.
        """
        validate_rpps(rpps)
        validate_profession(profession)
        # Two attempts: a concurrent first sign-in may insert between our look-up and our
        # insert; its row is then visible to the second look-up (read committed).
        for _ in range(2):
            async with self._pool.acquire() as conn, conn.transaction():
                found = await self._bind(conn, subject, rpps, profession, display_name)
                if found is not None:
                    return found
                row = await conn.fetchrow(
                    f"""INSERT INTO clinicians (id, rpps, profession, display_name,
                                                oidc_subject)
                        VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
                        RETURNING {_COLUMNS}""",  # noqa: S608 (constant column list)
                    uuid.uuid4(), rpps, profession, display_name, subject)
                if row is not None:
                    return _row(row)
        raise IdentityConflict("the sign-in raced with another one for the same account")

    async def _bind(self, conn: asyncpg.Connection, subject: str, rpps: str,
                    profession: str, display_name: str) -> Clinician | None:
        # One statement, one snapshot: two look-ups could see a concurrent first sign-in's
        # row in the second and not the first, and take our own account for another's.
        rows = await conn.fetch(
            "SELECT id, rpps, oidc_subject FROM clinicians"
            " WHERE oidc_subject = $1 OR rpps = $2 FOR UPDATE", subject, rpps)
        mine = next((r for r in rows if r["oidc_subject"] == subject), None)
        if mine is not None:
            if mine["rpps"].strip() != rpps:
                raise IdentityConflict("the identity provider now names another RPPS number "
                                       "for this account")
            row = await conn.fetchrow(
                f"""UPDATE clinicians SET profession = $2, display_name = $3 WHERE id = $1
                    RETURNING {_COLUMNS}""",  # noqa: S608
                mine["id"], profession, display_name)
            return _row(row)
        if not rows:
            return None
        if rows[0]["oidc_subject"] is not None:
            raise IdentityConflict("this RPPS number is already bound to another "
                                   "identity-provider account")
        row = await conn.fetchrow(
            f"""UPDATE clinicians SET oidc_subject = $2 WHERE id = $1
                RETURNING {_COLUMNS}""",  # noqa: S608
            rows[0]["id"], subject)
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
