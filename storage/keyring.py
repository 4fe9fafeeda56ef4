"""Data keys in the database, wrapped by the key provider; unwrapped copies cached in memory."""

from __future__ import annotations

import secrets

import asyncpg

from storage.crypto import KEY_BYTES, KeyProvider
from storage.errors import KeyUnavailable
from storage.owner_secrets import OwnerSecrets


def system_owner(purpose: str) -> str:
    return f"system:{purpose}"


def _context(owner: str, version: int) -> bytes:
    # Binds a wrapped key to its row: a wrapped key copied to another owner does not unwrap.
    return f"healthiot-data-key|{owner}|{version}".encode()


class Keyring:
    """Creates, finds and unwraps data keys. One per process; pass it down.

    A data key is derived from wrapped material in the database and, when ``owners`` is
    given, the owner's secret outside it (storage/owner_secrets.py), so that erasing an owner
    also defeats dumps taken before."""

    def __init__(self, provider: KeyProvider, owners: OwnerSecrets | None = None) -> None:
        self._provider = provider
        self._owners = owners
        self._cache: dict[tuple[str, int], bytes] = {}
        self._current: dict[str, int] = {}

    @property
    def provider(self) -> KeyProvider:
        return self._provider

    async def create(self, conn: asyncpg.Connection, owner: str) -> int:
        """Create a first data key for ``owner`` unless one exists; returns its version."""
        if self._owners is not None:
            self._owners.create(owner)
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
        if self._owners is not None:
            key = self._owners.derive(owner, key)
        self._cache[(owner, row["version"])] = key
        return key

    def forget(self, owner: str) -> None:
        """Drop cached keys of ``owner`` and destroy its secret (erasure)."""
        self._current.pop(owner, None)
        for cached in [k for k in self._cache if k[0] == owner]:
            del self._cache[cached]
        if self._owners is not None:
            self._owners.destroy(owner)

    async def rewrap_all(self, conn: asyncpg.Connection, new: KeyProvider) -> int:
        """KEK rotation: every data key re-wrapped by ``new``, each row in its own short
        transaction, no data rewritten. Readers keep working throughout because
        ``self``'s provider must be able to unwrap both (a KekRing of old and new);
        returns how many keys were re-wrapped."""
        done = 0
        rows = await conn.fetch("SELECT owner, version FROM data_keys WHERE kek_id <> $1",
                                new.kek_id)
        for row in rows:
            async with conn.transaction():
                current = await conn.fetchrow(
                    "SELECT kek_id, wrapped FROM data_keys WHERE owner = $1 AND version = $2"
                    " FOR UPDATE", row["owner"], row["version"])
                if current is None or current["kek_id"] == new.kek_id:
                    continue
                context = _context(row["owner"], row["version"])
                material = self._provider.unwrap(current["wrapped"], current["kek_id"], context)
                await conn.execute(
                    "UPDATE data_keys SET kek_id = $3, wrapped = $4"
                    " WHERE owner = $1 AND version = $2", row["owner"], row["version"],
                    new.kek_id, new.wrap(material, context))
                done += 1
        return done
