"""Operator accounts: the people who run the service (issue 22), made by an administrator
with `healthiot operators add`; password + TOTP, like clinicians'.

Two roles: ``operator`` reads refusals without payloads; ``operator-values`` may also open
payloads, which can hold health values. The role is read at every request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from storage.crypto import open_sealed, seal
from storage.errors import DuplicateOperator
from storage.keyring import Keyring
from storage.patients import SECRETS_KEY

OPERATOR = "operator"
OPERATOR_VALUES = "operator-values"
ROLES = (OPERATOR, OPERATOR_VALUES)
__all__ = ["ROLES", "DuplicateOperator", "OperatorAccount", "Operators"]


@dataclass(frozen=True, slots=True)
class OperatorAccount:
    id: uuid.UUID
    username: str
    display_name: str
    role: str
    password_hash: str

    @property
    def may_open_payloads(self) -> bool:
        return self.role == OPERATOR_VALUES


def _totp_aad(operator_id: uuid.UUID) -> bytes:
    return f"totp|operator|{operator_id}".encode()


_COLUMNS = "id, username, display_name, role, password_hash"


def _row(row: asyncpg.Record) -> OperatorAccount:
    return OperatorAccount(row["id"], row["username"], row["display_name"], row["role"],
                           row["password_hash"])


class Operators:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def create(self, *, username: str, display_name: str, role: str,
                     password_hash: str, totp_secret: bytes) -> OperatorAccount:
        """A password + TOTP account; raises ValueError for an unknown role,
        DuplicateOperator for a username taken."""
        if role not in ROLES:
            raise ValueError(f"an operator's role is one of {', '.join(ROLES)}, not {role!r}")
        operator_id = uuid.uuid4()
        async with self._pool.acquire() as conn:
            _, key = await self._keyring.system_key(conn, SECRETS_KEY)
            try:
                await conn.execute(
                    """INSERT INTO operators (id, username, display_name, role, password_hash,
                                              totp_sealed)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    operator_id, username, display_name, role, password_hash,
                    seal(key, totp_secret, _totp_aad(operator_id)))
            except asyncpg.UniqueViolationError:
                raise DuplicateOperator(f"an operator {username!r} exists already") from None
        return OperatorAccount(operator_id, username, display_name, role, password_hash)

    async def by_username(self, username: str) -> OperatorAccount | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM operators WHERE username = $1", username)  # noqa: S608
        return _row(row) if row else None

    async def by_id(self, operator_id: uuid.UUID) -> OperatorAccount | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM operators WHERE id = $1", operator_id)  # noqa: S608
        return _row(row) if row else None

    async def accept_totp_step(self, operator_id: uuid.UUID, step: int) -> bool:
        """Record ``step`` as used; False when it (or a later one) was used already."""
        done = await self._pool.fetchval(
            "UPDATE operators SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2"
            " RETURNING id", operator_id, step)
        return done is not None

    async def totp_secret(self, operator_id: uuid.UUID) -> bytes:
        async with self._pool.acquire() as conn:
            sealed = await conn.fetchval("SELECT totp_sealed FROM operators WHERE id = $1",
                                         operator_id)
            _, key = await self._keyring.system_key(conn, SECRETS_KEY)
        return open_sealed(key, sealed, _totp_aad(operator_id))
