"""Sessions and their rotating refresh tokens (RFC 9700 habits).

A refresh token is used once: using it returns a new one of the same session (family). A
token presented a second time means someone holds a copy: the whole session is revoked, and
with it the access tokens that carry its id. Tokens are stored as SHA-256 hashes only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

REFRESH_TTL = dt.timedelta(days=30)


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Rotated:
    session_id: uuid.UUID
    subject: str
    methods: list[str]
    refresh_token: str


class RefreshRefused(Exception):
    """Unknown, expired, revoked or reused; ``reused`` says the family was just revoked."""

    def __init__(self, reason: str, *, reused: bool = False) -> None:
        super().__init__(reason)
        self.reused = reused


class Sessions:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def open(self, subject: str, methods: list[str]) -> Rotated:
        session_id = uuid.uuid4()
        token = secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sessions (id, subject, methods) VALUES ($1, $2, $3)",
                session_id, subject, methods)
            await self._issue(conn, session_id, token)
        return Rotated(session_id, subject, methods, token)

    async def _issue(self, conn: asyncpg.Connection, session_id: uuid.UUID, token: str) -> None:
        await conn.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, expires_at)"
            " VALUES ($1, $2, now() + $3::interval)", _hash(token), session_id, REFRESH_TTL)

    async def rotate(self, token: str) -> Rotated:
        """Spend ``token`` and return its successor; raises RefreshRefused."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                row = await conn.fetchrow(
                    """SELECT t.session_id, t.used_at, t.expires_at < now() AS expired,
                              s.subject, s.methods, s.revoked_at
                       FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
                       WHERE t.token_hash = $1 FOR UPDATE OF t, s""", _hash(token))
                if row is None:
                    raise RefreshRefused("unknown refresh token")
                if row["revoked_at"] is not None:
                    raise RefreshRefused("the session has ended")
                if row["expired"]:
                    raise RefreshRefused("the refresh token has expired")
                reused = row["used_at"] is not None
                if reused:
                    # Committed before the refusal is raised: the thief's copy dies too.
                    await conn.execute(
                        "UPDATE sessions SET revoked_at = now(), revoked_reason ="
                        " 'refresh token reused' WHERE id = $1", row["session_id"])
                else:
                    await conn.execute(
                        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
                        _hash(token))
                    successor = secrets.token_urlsafe(32)
                    await self._issue(conn, row["session_id"], successor)
        if reused:
            raise RefreshRefused("refresh token reused: the session is revoked", reused=True)
        return Rotated(row["session_id"], row["subject"], list(row["methods"]), successor)

    async def revoke(self, session_id: uuid.UUID, reason: str) -> None:
        await self._pool.execute(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = $2"
            " WHERE id = $1 AND revoked_at IS NULL", session_id, reason)

    async def revoke_all(self, subject: str, reason: str) -> None:
        await self._pool.execute(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = $2"
            " WHERE subject = $1 AND revoked_at IS NULL", subject, reason)

    async def is_active(self, session_id: uuid.UUID) -> bool:
        revoked = await self._pool.fetchval(
            "SELECT revoked_at IS NULL FROM sessions WHERE id = $1", session_id)
        return bool(revoked)
