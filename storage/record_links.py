"""The patient's link to their medical record: the OAuth authorisation in progress (PKCE
verifier, nonce) and, once given, the tokens and the person identifier the record bound to
them. Everything secret is sealed with the patient's data key, bound to the row by its
associated data; the OAuth ``state`` is kept only as a hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from storage.crypto import open_sealed, seal
from storage.keyring import Keyring

PENDING_FOR = dt.timedelta(minutes=10)  # time to sign in at the record and come back


def _aad(kind: str, patient_id: uuid.UUID, version: int) -> bytes:
    return f"healthiot-record-link|{kind}|{patient_id}|{version}".encode()


def _hash(state: str) -> bytes:
    return hashlib.sha256(state.encode()).digest()


@dataclass(frozen=True, slots=True)
class Pending:
    patient_id: uuid.UUID
    verifier: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Person:
    """The patient as the record knows them: an identifier in an OID's namespace."""

    system_oid: str
    value: str


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_at: dt.datetime
    person: Person


@dataclass(frozen=True, slots=True)
class Link:
    state: str  # linked, relink
    tokens: Tokens


class RecordLinks:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def begin(self, patient_id: uuid.UUID, state: str, verifier: str,
                    nonce: str) -> None:
        """Remember an authorisation request (a link already given stays usable until the
        new one completes)."""
        async with self._pool.acquire() as conn:
            version, key = await self._keyring.current(conn, str(patient_id))
            sealed = seal(key, json.dumps({"verifier": verifier, "nonce": nonce}).encode(),
                          _aad("request", patient_id, version))
            await conn.execute("DELETE FROM record_link_requests WHERE expires_at < now()")
            await conn.execute(
                """INSERT INTO record_link_requests (state_hash, patient_id, key_version,
                                                     sealed, expires_at)
                   VALUES ($1, $2, $3, $4, now() + $5::interval)""",
                _hash(state), patient_id, version, sealed, PENDING_FOR)

    async def take_pending(self, state: str) -> Pending | None:
        """The request that ``state`` answers, once: a replayed, unknown or late redirect
        gets None."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """DELETE FROM record_link_requests WHERE state_hash = $1
                   RETURNING patient_id, key_version, sealed, expires_at > now() AS fresh""",
                _hash(state))
            if row is None or not row["fresh"]:
                return None
            key = await self._keyring.get(conn, str(row["patient_id"]), row["key_version"])
            plain = json.loads(open_sealed(key, row["sealed"], _aad(
                "request", row["patient_id"], row["key_version"])))
            return Pending(row["patient_id"], plain["verifier"], plain["nonce"])

    async def save(self, patient_id: uuid.UUID, tokens: Tokens) -> None:
        """The link is given (or refreshed): keep the tokens, sealed."""
        async with self._pool.acquire() as conn:
            version, key = await self._keyring.current(conn, str(patient_id))
            plain = {"access_token": tokens.access_token,
                     "refresh_token": tokens.refresh_token,
                     "expires_at": tokens.expires_at.isoformat(),
                     "person": [tokens.person.system_oid, tokens.person.value]}
            sealed = seal(key, json.dumps(plain).encode(), _aad("tokens", patient_id, version))
            await conn.execute(
                """INSERT INTO record_links (patient_id, state, key_version, tokens_sealed,
                                             access_expires_at)
                   VALUES ($1, 'linked', $2, $3, $4)
                   ON CONFLICT (patient_id) DO UPDATE SET state = 'linked', key_version = $2,
                       tokens_sealed = $3, access_expires_at = $4, updated_at = now()""",
                patient_id, version, sealed, tokens.expires_at)

    async def get(self, patient_id: uuid.UUID) -> Link | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT state, key_version, tokens_sealed FROM"
                                      " record_links WHERE patient_id = $1", patient_id)
            if row is None:
                return None
            key = await self._keyring.get(conn, str(patient_id), row["key_version"])
            tokens = _tokens(json.loads(open_sealed(
                key, row["tokens_sealed"], _aad("tokens", patient_id, row["key_version"]))))
            return Link(row["state"], tokens)

    async def mark_relink(self, patient_id: uuid.UUID) -> None:
        """The record no longer takes our tokens: the patient must link again."""
        await self._pool.execute("UPDATE record_links SET state = 'relink', updated_at = now()"
                                 " WHERE patient_id = $1",
                                 patient_id)

    async def remove(self, patient_id: uuid.UUID) -> Tokens | None:
        """Forget the link; returns its tokens (to revoke them at the record)."""
        link = await self.get(patient_id)
        await self._pool.execute("DELETE FROM record_links WHERE patient_id = $1", patient_id)
        await self._pool.execute("DELETE FROM record_link_requests WHERE patient_id = $1",
                                 patient_id)
        return link.tokens if link else None

    async def set_system_id(self, device_id: str, system_id: str) -> None:
        """Record a device's PHD system id (EUI-64, e.g. 00-1B-C5-FF-FE-00-00-2A)."""
        await self._pool.execute(
            """INSERT INTO record_device_system_ids (device_id, system_id) VALUES ($1, $2)
               ON CONFLICT (device_id) DO UPDATE SET system_id = $2""",
            device_id, system_id.upper())

    async def system_ids(self, device_ids: list[str]) -> dict[str, str]:
        rows = await self._pool.fetch("SELECT device_id, system_id FROM"
                                      " record_device_system_ids WHERE device_id = ANY($1)",
                                      device_ids)
        return {r["device_id"]: r["system_id"] for r in rows}


def _tokens(plain: dict[str, Any]) -> Tokens:
    return Tokens(plain["access_token"], plain["refresh_token"],
                  dt.datetime.fromisoformat(plain["expires_at"]),
                  Person(*plain["person"]))
