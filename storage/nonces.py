"""Single-use nonces for OpenID Connect sign-in, shared by every API replica.

A nonce is 256 random bits, stored only as its SHA-256 with an expiry; spending it deletes
the row in the same statement that finds it, so two sign-ins racing with one ID token
cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import asyncpg

NONCE_TTL = dt.timedelta(minutes=10)  # a sign-in at the provider takes a minute or two


def _hash(nonce: str) -> bytes:
    return hashlib.sha256(nonce.encode()).digest()


class Nonces:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def issue(self, ttl: dt.timedelta = NONCE_TTL) -> str:
        """A new nonce, good until ``ttl`` from now; expired ones are removed meanwhile."""
        nonce = secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM oidc_nonces WHERE expires_at < now()")
            await conn.execute(
                "INSERT INTO oidc_nonces (nonce_sha256, expires_at) VALUES ($1, now() + $2)",
                _hash(nonce), ttl)
        return nonce

    async def spend(self, nonce: str) -> bool:
        """True once for a nonce issued here and not expired; False ever after."""
        return bool(await self._pool.fetchval(
            "DELETE FROM oidc_nonces WHERE nonce_sha256 = $1 RETURNING expires_at > now()",
            _hash(nonce)))
