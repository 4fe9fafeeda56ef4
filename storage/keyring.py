"""Data keys in the database, wrapped by the key provider; unwrapped copies cached in memory."""

from __future__ import annotations

import secrets

import asyncpg

from storage.crypto import KEY_BYTES, KeyProvider
from storage.errors import KeyUnavailable


def system_owner(purpose: str) -> str:
    return f"system:{purpose}"


def _context(owner: str, version: int) -> bytes:
    # Binds a wrapped key to its row: a wrapped key copied to another owner does not unwrap.
    return f"healthiot-data-key|{owner}|{version}".encode()


class Keyring:
    """Creates, finds and unwraps data keys. One per process; pass it down."""

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider
        self._cache: dict[tuple[str, int], bytes] = {}
        self._current: dict[str, int] = {}

    async def create(self, conn: asyncpg.Connection, owner: str) -> int:
        """Create a first data key for ``owner`` unless one exists; returns its version."""
        key = secrets.token_bytes(KEY_BYTES)
        wrapped = self._provider.wrap(key, _context(owner, 1))
        await conn.execute(
            "INSERT INTO data_keys (owner, version, kek_id, wrapped) VALUES ($1, 1, $2, $3)"
            " ON CONFLICT DO NOTHING", owner, self._provider.kek_id, wrapped)
        return 1

    async def current(self, conn: asyncpg.Connection, owner: str) -> tuple[int, bytes]:
        """The newest (version, key) of ``owner``; raises KeyUnavailable when there is none."""
        version = self._current.get(owner)
        if version is not None:
            return version, self._cache[(owner, version)]
        row = await conn.fetchrow(
            "SELECT version, kek_id, wrapped FROM data_keys WHERE owner = $1"
            " ORDER BY version DESC LIMIT 1", owner)
        if row is None:
            raise KeyUnavailable(f"no data key for {owner}")
        key = self._unwrap(owner, row)
        self._current[owner] = row["version"]
        return row["version"], key

    async def get(self, conn: asyncpg.Connection, owner: str, version: int) -> bytes:
        """The key ``version`` of ``owner``; raises KeyUnavailable when it does not exist."""
        cached = self._cache.get((owner, version))
        if cached is not None:
            return cached
        row = await conn.fetchrow(
            "SELECT version, kek_id, wrapped FROM data_keys WHERE owner = $1 AND version = $2",
            owner, version)
        if row is None:
            raise KeyUnavailable(f"no data key {version} for {owner}")
        return self._unwrap(owner, row)

    async def system_key(self, conn: asyncpg.Connection, purpose: str) -> tuple[int, bytes]:
        """The key of a system purpose (quarantine, secrets), created on first use."""
        owner = system_owner(purpose)
        if owner not in self._current:
            await self.create(conn, owner)
        return await self.current(conn, owner)

    def _unwrap(self, owner: str, row: asyncpg.Record) -> bytes:
        key = self._provider.unwrap(row["wrapped"], row["kek_id"], _context(owner, row["version"]))
        self._cache[(owner, row["version"])] = key
        return key
