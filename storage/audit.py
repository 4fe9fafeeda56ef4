"""The audit log: who did what to whose data, when, with what outcome. Never health values.

Append-only, chained and anchored, so that `healthiot audit verify` shows what someone who
reached the database did to it:

- Each row's hash is HMAC-SHA256, under a key kept outside the database, over the previous
  row's hash and the row's own content. Editing, inserting or removing a row breaks the
  chain there, and whoever lacks the key cannot compute a chain that holds again.
- The chain's head (row id and hash) is written outside the database too: appended to a
  file of the anchor directory by the process that appended the row, at most
  ``ANCHOR_EVERY_S`` after it. Removing the newest rows, or re-chaining with a stolen key,
  leaves an anchor that no row matches.
- The services' database role may only INSERT and SELECT; the retention job deletes from
  the oldest end through the owner's ``audit_log_cut`` (migration 100), which keeps every
  row not yet past the period. The oldest remaining row's ``prev_hash`` then starts the
  chain.

Rows chained before the key existed (plain SHA-256, up to ``audit_chain.legacy_until``) are
checked as they were; the first keyed row's MAC covers their last hash (migration 101).
Appends are serialised by a transaction-scoped advisory lock: one chain, one writer at a
time (a row per request is a small price).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from storage.device_refs import pseudonymise
from storage.errors import KeyUnavailable

log = logging.getLogger(__name__)

_CHAIN_LOCK = 0x41554454  # "AUDT"; also taken by audit_log_cut (migration 100)
GENESIS = b"\x00" * 32
KEY_BYTES = 32
# How stale the newest anchor may be: the rows of the last second of activity are the only
# ones whose removal the anchors may miss. A file line per second per process at most.
ANCHOR_EVERY_S = 1.0
_SUFFIX = ".anchors"


def _encode(row_id: int, at: dt.datetime, actor: str, patient_id: uuid.UUID | None,
            action: str, resource: str, outcome: str, client: str | None = None) -> bytes:
    fields = [str(row_id), at.astimezone(dt.UTC).isoformat(), actor, str(patient_id or ""),
              action, resource, outcome]
    if client is not None:  # rows without an address keep the encoding they had
        fields.append(client)
    # Length-prefixed, so no choice of field contents can forge another row's encoding.
    return b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)


def row_mac(key: bytes, prev: bytes, row_id: int, at: dt.datetime, actor: str,
            patient_id: uuid.UUID | None, action: str, resource: str, outcome: str,
            client: str | None = None) -> bytes:
    """The keyed chain: HMAC-SHA256 over the previous hash and the row's content."""
    return hmac.digest(key, prev + _encode(row_id, at, actor, patient_id, action, resource,
                                           outcome, client), "sha256")


def legacy_row_hash(prev: bytes, row_id: int, at: dt.datetime, actor: str,
                    patient_id: uuid.UUID | None, action: str, resource: str,
                    outcome: str) -> bytes:
    """The chain before the key (rows up to ``audit_chain.legacy_until``): plain SHA-256."""
    return hashlib.sha256(prev + _encode(row_id, at, actor, patient_id, action, resource,
                                         outcome)).digest()


class AuditKey:
    """The chain's 256-bit key, in a file readable by its owner only, loaded on first use (a
    process that never audits, the bridge, needs no copy)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        self._create = create  # development only: a production key must be provided
        self._key: bytes | None = None

    def get(self) -> bytes:
        if self._key is None:
            if not self.path.exists() and self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(KEY_BYTES))
            try:
                key = self.path.read_bytes()
            except OSError:
                raise KeyUnavailable(f"no audit chain key at {self.path}") from None
            if len(key) != KEY_BYTES:
                raise KeyUnavailable(f"the audit key file {self.path} does not hold 32 bytes")
            self._key = key
        return self._key


class Anchors:
    """Heads of the chain, outside the database: one line ``<id> <hash hex>`` per anchor,
    appended to a file per UTC day. O_APPEND with one write per line: processes sharing the
    directory do not interleave within a line."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, row_id: int, digest: bytes, day: dt.date) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / f"{day.isoformat()}{_SUFFIX}",
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{row_id} {digest.hex()}\n".encode())
        finally:
            os.close(fd)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{_SUFFIX}")) if self.directory.exists() else []

    def read(self, path: Path) -> list[tuple[int, bytes]]:
        """The anchors of one file; a line that does not parse is an anchor of id -1 (a
        broken one: someone wrote there)."""
        found = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row_id, digest = line.split(" ")
                found.append((int(row_id), bytes.fromhex(digest)))
            except ValueError:
                found.append((-1, b""))
        return found

    def prune(self, before: dt.date) -> int:
        """Delete the files of days before ``before`` (their rows are past retention)."""
        gone = 0
        for path in self.files():
            day = _day_of(path)
            if day is not None and day < before:
                path.unlink(missing_ok=True)
                gone += 1
        return gone


def _day_of(path: Path) -> dt.date | None:
    try:
        return dt.date.fromisoformat(path.name.removesuffix(_SUFFIX))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ChainCheck:
    rows: int
    first_broken_id: int | None  # None when the whole chain holds
    reason: str | None = None
    anchors: int = 0  # anchors checked against a row

    @property
    def intact(self) -> bool:
        return self.first_broken_id is None


class Audit:
    def __init__(self, pool: asyncpg.Pool, key: AuditKey, anchors: Anchors, *,
                 anchor_every_s: float = ANCHOR_EVERY_S) -> None:
        self._pool = pool
        self._key = key
        self._anchors = anchors
        self._every = anchor_every_s
        self._head: tuple[int, bytes] | None = None  # appended here, not yet anchored
        self._anchored_id = 0
        self._last_anchor = -float("inf")
        self._timer: asyncio.TimerHandle | None = None

    async def record(self, *, actor: str, patient_id: uuid.UUID | None, action: str,
                     resource: str, outcome: str, client: str | None = None) -> None:
        """Append one entry; ``client``: the network address of the request it traces
        (the peer of the connection), None when no request made it."""
        key = self._key.get()
        async with self._pool.acquire() as conn, conn.transaction():
            resource = await pseudonymise(conn, resource)  # no device id outlives erasure
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
            prev = await conn.fetchval("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
            row_id = await conn.fetchval("SELECT nextval('audit_log_id_seq')")
            # Microseconds, as PostgreSQL keeps them: the hash must survive the round trip.
            at = dt.datetime.now(dt.UTC)
            digest = row_mac(key, prev or GENESIS, row_id, at, actor, patient_id, action,
                             resource, outcome, client)
            await conn.execute(
                """INSERT INTO audit_log (id, at, actor, patient_id, action, resource, outcome,
                                          prev_hash, hash, client_address)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                row_id, at, actor, patient_id, action, resource, outcome, prev or GENESIS,
                digest, client)
        # After the commit: an anchor must never name a row that is not there.
        self._advance(row_id, digest)

    def _advance(self, row_id: int, digest: bytes) -> None:
        if self._head is None or row_id > self._head[0]:
            self._head = (row_id, digest)
        wait = self._last_anchor + self._every - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Anchor the newest row this process appended, if not done yet. A small file
        append, done on the loop: cheaper than a thread hop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head, self._head = self._head, None
        if head is None or head[0] <= self._anchored_id:
            return
        try:
            self._anchors.write(head[0], head[1], dt.datetime.now(dt.UTC).date())
        except OSError:
            # The row is stored; only its protection against removal is late. Loud, since
            # a trace that is not anchored can be cut unseen.
            log.exception("could not anchor audit entry %d in %s", head[0],
                          self._anchors.directory)
            self._head = head
            return
        self._anchored_id, self._last_anchor = head[0], time.monotonic()

    async def for_patient(self, patient_id: uuid.UUID, limit: int = 100,
                          before_id: int | None = None) -> list[asyncpg.Record]:
        """The patient's entries, newest first, a page of ``limit`` before ``before_id``."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, at, actor, action, resource, outcome, client_address FROM audit_log"
            " WHERE patient_id = $1 AND ($3::bigint IS NULL OR id < $3)"
            " ORDER BY id DESC LIMIT $2", patient_id, limit, before_id)
        return rows

    async def verify_chain(self, batch: int = 10_000,
                           retention: dt.timedelta | None = None) -> ChainCheck:
        """Walk the chain from its oldest row, then hold every anchor against its row.

        Broken at the first row whose stored hash is not the MAC of its content and its
        predecessor's hash (edited, inserted, or a row before it removed), or whose hash is
        not the one anchored for it, or that was anchored and is gone (the newest rows
        removed). With ``retention``, also when rows were cut from the oldest end that
        were anchored too recently to be past it. Anchors are read first: a row appended
        meanwhile is no false alarm."""
        key = self._key.get()
        anchor_files = self._anchors.files()
        checked, last_id, expected_prev = 0, 0, None
        broken: tuple[int, str] | None = None
        async with self._pool.acquire() as conn:
            legacy_until = await conn.fetchval("SELECT legacy_until FROM audit_chain")
            first_id = await conn.fetchval("SELECT min(id) FROM audit_log")
            while broken is None:
                rows = await conn.fetch(
                    """SELECT id, at, actor, patient_id, action, resource, outcome, prev_hash,
                              hash, client_address FROM audit_log WHERE id > $1
                       ORDER BY id LIMIT $2""",
                    last_id, batch)
                if not rows:
                    break
                for r in rows:
                    prev = r["prev_hash"] if expected_prev is None else expected_prev
                    fields = (r["id"], r["at"], r["actor"], r["patient_id"], r["action"],
                              r["resource"], r["outcome"])
                    digest = (legacy_row_hash(prev, *fields) if r["id"] <= legacy_until
                              else row_mac(key, prev, *fields, r["client_address"]))
                    if r["prev_hash"] != prev:
                        broken = (r["id"], "its predecessor is not the row it was chained to")
                        break
                    if r["hash"] != digest:
                        broken = (r["id"], "its hash is not the keyed hash of its content")
                        break
                    expected_prev, last_id = digest, r["id"]
                    checked += 1
            anchored, anchor_break = await self._check_anchors(conn, anchor_files, first_id,
                                                               retention)
        breaks = [b for b in (broken, anchor_break) if b is not None]
        if not breaks:
            return ChainCheck(checked, None, None, anchored)
        at, reason = min(breaks)
        return ChainCheck(checked, at, reason, anchored)

    async def _check_anchors(self, conn: asyncpg.Connection, files: list[Path],
                             first_id: int | None, retention: dt.timedelta | None,
                             ) -> tuple[int, tuple[int, str] | None]:
        """(anchors held against a row, the first break found or None)."""
        checked, found = 0, None
        # A file of a day after this one holds anchors of rows not yet past retention (a
        # day of margin: a row of late yesterday may be anchored today).
        recent = (dt.datetime.now(dt.UTC).date() - retention + dt.timedelta(days=1)
                  if retention is not None else None)
        for path in files:
            anchors = self._anchors.read(path)
            if any(row_id < 0 for row_id, _ in anchors):
                return checked, (first_id or 0, f"{path.name} holds a line that is no anchor")
            day = _day_of(path)
            if recent is not None and day is not None and day > recent:
                early = [i for i, _ in anchors if first_id is None or i < first_id]
                if early:
                    problem = (min(early), f"entry {min(early)} was anchored in {path.name}, "
                               "within the retention period, and is gone: rows were cut from "
                               "the oldest end before their time")
                    found = problem if found is None else min(found, problem)
            # Anchors of rows cut by retention (below the oldest row) have nothing to match.
            live = {i: d for i, d in anchors if first_id is None or i >= first_id}
            stored = {r["id"]: r["hash"] for r in await conn.fetch(
                "SELECT id, hash FROM audit_log WHERE id = ANY($1::bigint[])", list(live))}
            for row_id in sorted(live):
                checked += 1
                if row_id not in stored:
                    problem = (row_id, f"entry {row_id} was anchored in {path.name} and is "
                               "gone: rows were removed")
                elif stored[row_id] != live[row_id]:
                    problem = (row_id, f"entry {row_id} does not hold the hash anchored for "
                               f"it in {path.name}: the chain was rewritten")
                else:
                    continue
                found = problem if found is None else min(found, problem)
                break
        return checked, found

    async def cut_before(self, moment: dt.datetime) -> int:
        """Retention: delete entries older than ``moment`` from the oldest end, as far as the
        database's own retention period allows (audit_log_cut, migration 100), and the
        anchor files of days before it."""
        removed = int(await self._pool.fetchval("SELECT audit_log_cut($1)", moment))
        oldest = await self._pool.fetchval("SELECT min(at) FROM audit_log")
        if oldest is not None:
            # A day of margin: the first remaining rows may have been anchored the day before.
            self._anchors.prune(oldest.astimezone(dt.UTC).date() - dt.timedelta(days=1))
        return removed

