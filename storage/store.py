"""Writes of ingested batches (idempotent, one transaction) and reads of a patient's series."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import numpy.typing as npt

from storage import ledger
from storage.crypto import open_sealed, seal_many
from storage.errors import IntegrityError, KeyUnavailable
from storage.held import HeldWeighing, hold
from storage.keyring import Keyring
from storage.quarantine import QuarantineIn as QuarantineIn  # re-exported: the bridge makes them
from storage.quarantine import write_quarantined
from storage.segments import LEVEL_COMPACT, LEVEL_INGEST, Samples, pack_many, unpack
from vitals.normalise import Flag

# Keys the payload digests of the message ledger: a plain hash of a small pack could be
# brute-forced back to its value. System keys have one version, so digests stay comparable.
DIGEST_KEY = "ledger_digest"
log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: see MessageIn
class SegmentIn:
    patient_id: uuid.UUID
    metric: str
    samples: Samples


# Not frozen: one is made per message on the ingest path, and a frozen dataclass's
# __init__ costs three times a plain one's (2.9 against 0.9 us with MessageIn's fields).
# Nothing changes one once made.
@dataclass(slots=True)
class MessageIn:
    """One device message that passed decoding: its samples, grouped by metric."""

    device_id: str
    seq: int
    received_at: dt.datetime
    segments: list[SegmentIn]
    rejected: int
    # Oldest and newest accepted sample, device clock (None: no sample accepted), and the
    # non-canonical units per metric its samples were converted from (None: all canonical).
    first_sample_at: dt.datetime | None = None
    last_sample_at: dt.datetime | None = None
    raw_units: Mapping[str, list[str]] | None = None
    # Weighings of a shared scale that no user could be sure of: held, not stored as
    # anyone's data (storage/held.py).
    held: Sequence[HeldWeighing] = ()
    # The device's numbering epoch: the idempotency key is (device_id, epoch, seq).
    epoch: int = 0
    # The message as received, quarantined instead when its number is stored already with
    # another payload (a reused number, not a repeat); the digest is of its payload. None:
    # a repeat is not compared, and no digest is kept.
    if_reused: QuarantineIn | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return self.device_id, self.epoch, self.seq

    @property
    def samples(self) -> int:
        """Samples stored from this message, held ones included: the loss ledger's count."""
        return (sum(len(s.samples) for s in self.segments)
                + sum(len(h.values) for h in self.held))


@dataclass(frozen=True, slots=True)
class Ingested:
    """What a batch did: messages stored for the first time, and messages refused because
    their (device, epoch, seq) is stored with another payload (their ``if_reused`` record
    was quarantined)."""

    new: int
    reused: list[MessageIn]
    # (device, epoch, seq) of the messages stored for the first time by this batch.
    fresh: frozenset[tuple[str, int, int]] = frozenset()
    # The quarantine records this batch wrote, by reason (a redelivery's are not written).
    quarantined: Counter[str] = field(default_factory=Counter)


def _segment_aad(segment_id: uuid.UUID, patient_id: uuid.UUID, metric: str, device_id: str,
                 start: dt.datetime, end: dt.datetime, samples: int, key_version: int) -> bytes:
    # Every column that identifies the row: a blob moved to another row does not open.
    return (f"segment|{segment_id}|{patient_id}|{metric}|{device_id}|{start.isoformat()}|"
            f"{end.isoformat()}|{samples}|{key_version}").encode()


def _segment_aads(ids: Sequence[str], patient_id: uuid.UUID, metrics: Sequence[str],
                  devices: Sequence[str], lows_ms: npt.NDArray[np.int64],
                  highs_ms: npt.NDArray[np.int64], counts: Sequence[int], key_version: int
                  ) -> list[bytes]:
    """``_segment_aad`` of each row of one patient, times given in ms: the same bytes, with
    the timestamps formatted by numpy at once (isoformat and uuid's str, one row at a time,
    cost more than sealing the row)."""
    patient = str(patient_id)
    return [f"segment|{sid}|{patient}|{metric}|{device}|{lo}|{hi}|{n}|{key_version}".encode()
            for sid, metric, device, lo, hi, n in zip(
                ids, metrics, devices, _isoformat_many(lows_ms), _isoformat_many(highs_ms),
                counts, strict=True)]


def _isoformat_many(ms: npt.NDArray[np.int64]) -> list[str]:
    """``_utc(m).isoformat()`` of each m."""
    as_datetime = ms.astype("datetime64[ms]")
    # isoformat leaves out a fraction of zero; numpy writes it at a fixed unit.
    text = np.where(ms % 1000 == 0, np.datetime_as_string(as_datetime, unit="s"),
                    np.datetime_as_string(as_datetime, unit="us"))
    return [t + "+00:00" for t in text.tolist()]


def _uuid4_texts(n: int) -> list[str]:
    """``n`` random version-4 UUIDs, as text: uuid4's randomness drawn once for all."""
    raw = np.frombuffer(bytearray(os.urandom(16 * n)), dtype=np.uint8).reshape(n, 16)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
            f"{h[i + 20:i + 32]}" for i in range(0, 32 * n, 32)]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAY_MS = 86_400_000
# Every segment spans less than a day (written so, and checked by the table since 150), so
# one that ends at or after ``start`` began less than this before it: reads bound start_at
# from below too, and the engine prunes partitions and chunks from both ends.
MAX_SEGMENT_SPAN = dt.timedelta(days=1)
SEGMENTS_IN_RANGE = """
    SELECT id, device_id, start_at, end_at, samples, key_version, sealed
    FROM segments WHERE patient_id = $1 AND metric = $2
    AND end_at >= $3 AND start_at < $4 AND start_at > $5"""


def within_a_day(segment: SegmentIn) -> list[SegmentIn]:
    """``segment`` as it is when its samples span less than a day (most messages: a device's
    last seconds or minutes), else cut at UTC midnights, one piece per day it has samples
    in (a device's backlog of several days)."""
    t = segment.samples.t_ms
    if int(t.max()) - int(t.min()) < _DAY_MS:
        return [segment]
    return by_utc_day(segment)


def _within_a_day_each(pieces: list[tuple[str, SegmentIn]]) -> list[tuple[str, SegmentIn]]:
    """(device id, segment) pairs with each segment ``within_a_day``: the spans of a batch
    found in one pass (numpy's min and max cost more on a minute of samples than the
    arithmetic does)."""
    if not pieces:
        return pieces
    counts = np.fromiter((len(s.samples) for _, s in pieces), dtype=np.intp, count=len(pieces))
    t_all = np.concatenate([s.samples.t_ms for _, s in pieces])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    spans = np.maximum.reduceat(t_all, starts) - np.minimum.reduceat(t_all, starts)
    if not (spans >= _DAY_MS).any():
        return pieces
    return [(device, piece) for (device, segment), long in zip(pieces, spans >= _DAY_MS,
                                                                strict=True)
            for piece in (by_utc_day(segment) if long else [segment])]


def by_utc_day(segment: SegmentIn) -> list[SegmentIn]:
    """``segment`` cut at UTC midnights: one piece per day it has samples in."""
    t = segment.samples.t_ms
    days = t // _DAY_MS
    if days.min() == days.max():
        return [segment]
    s = segment.samples
    return [SegmentIn(segment.patient_id, segment.metric,
                      Samples(t[days == d], s.value[days == d], s.flags[days == d]))
            for d in np.unique(days)]


def _utc(ms: int) -> dt.datetime:
    # Exact, unlike fromtimestamp(ms / 1000); positional, which is faster than milliseconds=.
    return _EPOCH + dt.timedelta(0, 0, 0, ms)


class Store:
    """Health data in and out. Takes the pool and the keyring; creates neither."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring
        self.set_aside_total = 0  # segments moved to segments_set_aside by this process

    async def ingest(self, messages: Sequence[MessageIn],
                     quarantined: Sequence[QuarantineIn] = ()) -> int:
        """Store a batch (``ingest_batch``); returns how many messages were new."""
        return (await self.ingest_batch(messages, quarantined)).new

    async def ingest_batch(self, messages: Sequence[MessageIn],
                           quarantined: Sequence[QuarantineIn] = ()) -> Ingested:
        """Store a batch in one transaction; a message already stored is skipped, so a
        redelivered batch changes nothing. A message whose number is stored with another
        payload is not skipped silently: its ``if_reused`` record is quarantined."""
        async with self._pool.acquire() as conn, conn.transaction():
            # Shared: batches go on side by side; a ledger compaction waits (storage/ledger).
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ledger.LOCK)
            # The first copy of a number in the batch is the one stored; the others are
            # compared with it (or with what was stored before) like later deliveries.
            firsts: dict[tuple[str, int, int], tuple[MessageIn, bytes | None]] = {}
            copies: list[tuple[MessageIn, bytes | None]] = []
            for message, digest in zip(messages, await self._digests(conn, messages),
                                       strict=True):
                if message.key in firsts:
                    copies.append((message, digest))
                else:
                    firsts[message.key] = (message, digest)
            # Numbers in a compacted run are stored: repeats, or reuses by their span.
            compacted = await ledger.compacted(conn, list(firsts))
            unique = [m for m, _ in firsts.values() if m.key not in compacted]
            new = await conn.fetch(
                """INSERT INTO ingested_messages (device_id, epoch, seq, received_at, samples,
                                                rejected, first_sample_at, last_sample_at,
                                                raw_units, digest)
                   SELECT d, e, s, r, n, x, f, l, u::jsonb, g
                   FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[],
                               $5::int[], $6::int[], $7::timestamptz[], $8::timestamptz[],
                               $9::text[], $10::bytea[])
                        AS m(d, e, s, r, n, x, f, l, u, g)
                   ON CONFLICT DO NOTHING RETURNING device_id, epoch, seq""",
                [m.device_id for m in unique], [m.epoch for m in unique],
                [m.seq for m in unique], [m.received_at for m in unique],
                [m.samples for m in unique],
                [m.rejected for m in unique], [m.first_sample_at for m in unique],
                [m.last_sample_at for m in unique],
                [None if m.raw_units is None else json.dumps(m.raw_units) for m in unique],
                [firsts[m.key][1] for m in unique])
            fresh = {(r["device_id"], r["epoch"], r["seq"]) for r in new}
            new_count = len(fresh)
            to_quarantine = [q for q in quarantined
                             if q.seq is None or (q.device_id, q.epoch, q.seq) in fresh]
            # Digests of the numbers stored before this batch, to tell a repeat from a reuse.
            before = await self._stored_digests(conn, list({
                m.key for m in messages
            if m.key not in fresh and m.key not in compacted and m.if_reused}))
            reused: list[MessageIn] = []
            for message, digest in [*firsts.values(), *copies]:
                key = message.key
                if key in compacted:
                    if message.if_reused is not None and compacted[key].excludes(
                            message.first_sample_at, message.last_sample_at):
                        reused.append(message)
                        to_quarantine.append(message.if_reused)
                    continue
                earlier = firsts[key][1] if key in fresh else before.get(key)
                if (message.if_reused is not None and digest is not None
                        and earlier is not None and not hmac.compare_digest(digest, earlier)):
                    reused.append(message)
                    to_quarantine.append(message.if_reused)
            stored = [m for m in unique if m.key in fresh]
            for message in stored:
                if message.held:
                    await hold(conn, self._keyring, message.device_id, message.seq,
                               message.received_at, message.held)
            pieces = _within_a_day_each([(m.device_id, segment) for m in stored
                                         for segment in m.segments])
            await self._copy_segments(conn, await self._sealed_segments(conn, pieces,
                                                                        LEVEL_INGEST))
            if to_quarantine:
                await write_quarantined(conn, self._keyring, to_quarantine)
            if messages:
                last_seen: dict[str, dt.datetime] = {}  # a device's latest in the batch
                for m in messages:
                    if m.device_id not in last_seen or m.received_at > last_seen[m.device_id]:
                        last_seen[m.device_id] = m.received_at
                await conn.execute(
                    """UPDATE devices d SET last_seen = GREATEST(d.last_seen, s.at)
                       FROM (SELECT unnest($1::text[]) AS id, unnest($2::timestamptz[]) AS at) s
                       WHERE d.id = s.id""",
                    list(last_seen), list(last_seen.values()))
        return Ingested(new_count, reused, frozenset(fresh),
                        Counter(q.reason for q in to_quarantine))

    async def _digests(self, conn: asyncpg.Connection,
                       messages: Sequence[MessageIn]) -> list[bytes | None]:
        if not any(m.if_reused for m in messages):
            return [None] * len(messages)
        _, key = await self._keyring.system_key(conn, DIGEST_KEY)
        return [None if m.if_reused is None else hmac.digest(key, m.if_reused.payload, "sha256")
                for m in messages]

    @staticmethod
    async def _stored_digests(conn: asyncpg.Connection, keys: Sequence[tuple[str, int, int]]
                              ) -> dict[tuple[str, int, int], bytes | None]:
        if not keys:
            return {}
        rows = await conn.fetch(
            """SELECT device_id, epoch, seq, digest FROM ingested_messages
               WHERE (device_id, epoch, seq) IN (
                   SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]))""",
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
        return {(r["device_id"], r["epoch"], r["seq"]): r["digest"] for r in rows}

    async def write_segments(self, conn: asyncpg.Connection, device_id: str,
                             segments: Sequence[SegmentIn]) -> None:
        """Seal and write segments measured by ``device_id`` in the caller's transaction
        (a held weighing claimed by a patient becomes their data this way)."""
        await self._copy_segments(conn, await self._sealed_segments(
            conn, [(device_id, piece) for s in segments for piece in within_a_day(s)]))

    @staticmethod
    async def _copy_segments(conn: asyncpg.Connection, rows: list[tuple[object, ...]]) -> None:
        if rows:
            await conn.copy_records_to_table(
                "segments", records=rows,
                columns=["id", "patient_id", "metric", "device_id", "start_at", "end_at",
                         "samples", "key_version", "sealed"])

    async def _sealed_segment(self, conn: asyncpg.Connection, device_id: str,
                              segment: SegmentIn) -> tuple[object, ...]:
        return (await self._sealed_segments(conn, [(device_id, segment)]))[0]

    async def _sealed_segments(self, conn: asyncpg.Connection,
                               pieces: Sequence[tuple[str, SegmentIn]],
                               level: int = LEVEL_COMPACT) -> list[tuple[object, ...]]:
        """Rows of ``segments`` for (device id, segment) pairs: packed together
        (``pack_many``), then sealed a patient at a time under their current key."""
        if not pieces:
            return []
        samples = [segment.samples for _, segment in pieces]
        blobs = pack_many(samples, level)
        counts = np.fromiter(map(len, samples), dtype=np.intp, count=len(samples))
        t_all = np.concatenate([s.t_ms for s in samples])
        firsts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        lows = np.minimum.reduceat(t_all, firsts)
        highs = np.maximum.reduceat(t_all, firsts)
        ids = _uuid4_texts(len(pieces))  # asyncpg takes a uuid as text
        by_patient: dict[uuid.UUID, list[int]] = {}
        for i, (_, segment) in enumerate(pieces):
            by_patient.setdefault(segment.patient_id, []).append(i)
        rows: list[tuple[object, ...]] = []
        for patient_id, mine in by_patient.items():
            version, key = await self._keyring.current(conn, str(patient_id))
            metrics = [pieces[i][1].metric for i in mine]
            devices = [pieces[i][0] for i in mine]
            n = counts[mine].tolist()
            aads = _segment_aads([ids[i] for i in mine], patient_id, metrics, devices,
                                 lows[mine], highs[mine], n, version)
            sealed = seal_many(key, [blobs[i] for i in mine], aads)
            rows += [(ids[i], patient_id, metric, device, _utc(lo), _utc(hi), count, version,
                      blob)
                     for i, metric, device, lo, hi, count, blob in zip(
                         mine, metrics, devices, lows[mine].tolist(), highs[mine].tolist(), n,
                         sealed, strict=True)]
        return rows

    async def read_series(self, patient_id: uuid.UUID, metric: str, start: dt.datetime,
                          end: dt.datetime) -> Samples:
        """A patient's samples of ``metric`` in [start, end), time-ordered, all sources
        together: one sample per (source, time) (see ``_one_per_time``), and a time and
        value that two sources share once."""
        by_device = await self.read_by_source(patient_id, metric, start, end)
        return _in_range(list(by_device.values()), start, end)

    async def read_by_source(self, patient_id: uuid.UUID, metric: str, start: dt.datetime,
                             end: dt.datetime) -> dict[str, Samples]:
        """The same, kept apart per source device: what each device measured, one sample
        per time (see ``_one_per_time``)."""
        by_device: dict[str, list[Samples]] = {}
        for device_id, samples in await self.read_segments(patient_id, metric, start, end):
            by_device.setdefault(device_id, []).append(samples)
        return {d: _one_per_time(parts, start, end) for d, parts in by_device.items()}

    async def read_segments(self, patient_id: uuid.UUID, metric: str, start: dt.datetime,
                            end: dt.datetime) -> list[tuple[str, Samples]]:
        """Every sample of a patient's ``metric`` as stored, copies kept: each segment row
        that may hold samples in [start, end), decrypted, as (source device, its samples),
        in no particular order. A segment is returned whole (the caller cuts it to the
        range), and a reading stored twice (under two sequence numbers) comes back twice:
        what a check of storage against what devices sent needs, where ``read_by_source``
        would give each time once. Raises IntegrityError for a row that does not open
        (tampered with, or moved), KeyUnavailable once the patient's key is erased."""
        async with self._pool.acquire() as conn:
            # Samples are kept from start's millisecond (_sorted_in_range): rows are chosen
            # from it too, or one whose last sample is that millisecond would be missed.
            lo = _utc(int(start.timestamp() * 1000))
            rows = await conn.fetch(SEGMENTS_IN_RANGE, patient_id, metric, lo, end,
                                    lo - MAX_SEGMENT_SPAN)
            parts = []
            for row in rows:
                key = await self._keyring.get(conn, str(patient_id), row["key_version"])
                aad = _segment_aad(row["id"], patient_id, metric, row["device_id"],
                                   row["start_at"], row["end_at"], row["samples"],
                                   row["key_version"])
                parts.append((row["device_id"], unpack(open_sealed(key, row["sealed"], aad))))
        return parts

    async def compact(self, patient_id: uuid.UUID, metric: str, device_id: str,
                      day: dt.datetime) -> int:
        """Merge the summarised segments of one source, metric and UTC day into one
        (exact duplicates dropped). Returns how many segments were merged (0: nothing to
        do). Rows are locked, so ingestion and reads carry on around it."""
        end = day + dt.timedelta(days=1)
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, device_id, start_at, end_at, samples, key_version, sealed
                   FROM segments WHERE patient_id = $1 AND metric = $2 AND device_id = $3
                   AND start_at >= $4 AND start_at < $5 AND rolled_up
                   ORDER BY start_at FOR UPDATE""", patient_id, metric, device_id, day, end)
            if len(rows) < 2:
                return 0
            parts, bad = [], []
            for row in rows:
                try:
                    parts.append(await self._open_row(conn, row, patient_id, metric))
                except (IntegrityError, KeyUnavailable) as exc:
                    bad.append((row, type(exc).__name__))
            await self._set_aside(conn, bad)
            rows = [r for r in rows if r["id"] not in {b["id"] for b, _ in bad}]
            if len(rows) < 2:
                return 0
            lo, hi = _utc(min(int(p.t_ms.min()) for p in parts)), _utc(
                max(int(p.t_ms.max()) for p in parts) + 1)
            merged = _in_range(parts, lo, hi)
            # Segments starting on one day may end on the next: the merge too, within a day.
            for piece in within_a_day(SegmentIn(patient_id, metric, merged)):
                record = await self._sealed_segment(conn, device_id, piece)
                await conn.execute(
                    """INSERT INTO segments (id, patient_id, metric, device_id, start_at,
                                             end_at, samples, key_version, sealed, rolled_up)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true)""", *record)
            await conn.execute("DELETE FROM segments WHERE id = ANY($1::uuid[])",
                               [r["id"] for r in rows])
        return len(rows)

    async def _open_row(self, conn: asyncpg.Connection, row: asyncpg.Record,
                        patient_id: uuid.UUID, metric: str) -> Samples:
        key = await self._keyring.get(conn, str(patient_id), row["key_version"])
        aad = _segment_aad(row["id"], patient_id, metric, row["device_id"], row["start_at"],
                           row["end_at"], row["samples"], row["key_version"])
        return unpack(open_sealed(key, row["sealed"], aad))

    async def set_aside_unopenable(self, patient_id: uuid.UUID, metric: str,
                                   start: dt.datetime, end: dt.datetime) -> int:
        """Move the segments of [start, end) that do not open to segments_set_aside (each
        logged by id, with the reason); returns how many. The maintenance job calls it when
        a day fails, so that one bad row stops nothing else."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SEGMENTS_IN_RANGE + " FOR UPDATE", patient_id, metric,
                                    start, end, start - MAX_SEGMENT_SPAN)
            bad = []
            for row in rows:
                try:
                    await self._open_row(conn, row, patient_id, metric)
                except (IntegrityError, KeyUnavailable) as exc:
                    bad.append((row, type(exc).__name__))
            await self._set_aside(conn, bad)
        return len(bad)

    async def _set_aside(self, conn: asyncpg.Connection,
                         bad: Sequence[tuple[asyncpg.Record, str]]) -> None:
        for row, reason in bad:
            await conn.execute(
                """WITH moved AS (DELETE FROM segments WHERE id = $1 AND start_at = $2
                       RETURNING id, patient_id, metric, device_id, start_at, end_at, samples,
                                 key_version, sealed)
                   INSERT INTO segments_set_aside (id, patient_id, metric, device_id, start_at,
                                                   end_at, samples, key_version, sealed, reason)
                   SELECT *, $3 FROM moved""", row["id"], row["start_at"], reason)
            log.warning("segment %s does not open (%s): set aside", row["id"], reason)
        self.set_aside_total += len(bad)

    async def stored_already(self, keys: Sequence[tuple[str, int, int]]
                             ) -> set[tuple[str, int, int]]:
        """Which of these (device id, epoch, seq) messages are stored already (a row of
        the ledger, or a number in one of its compacted runs)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT device_id, epoch, seq FROM ingested_messages
                   WHERE (device_id, epoch, seq) IN (
                       SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]))""",
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
            found = {(r["device_id"], r["epoch"], r["seq"]) for r in rows}
            return found | set(await ledger.compacted(conn, [k for k in keys
                                                             if k not in found]))

    async def count_stored(self, device_ids: Sequence[str]) -> tuple[int, int, int]:
        """(messages, samples, rejected samples) stored for these devices: the loss ledger
        (its rows and its compacted runs)."""
        return await ledger.count(self._pool, device_ids)


def _sorted_in_range(parts: list[Samples], start: dt.datetime, end: dt.datetime
                     ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64],
                                npt.NDArray[np.uint8]]:
    """Times, values and flags of ``parts`` in [start, end), ordered by time, then value."""
    if not parts:
        return np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint8)
    t = np.concatenate([p.t_ms for p in parts])
    v = np.concatenate([p.value for p in parts])
    f = np.concatenate([p.flags for p in parts])
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    keep = (t >= lo) & (t < hi)
    t, v, f = t[keep], v[keep], f[keep]
    order = np.lexsort((v, t))
    return t[order], v[order], f[order]


def _in_range(parts: list[Samples], start: dt.datetime, end: dt.datetime) -> Samples:
    """Samples of ``parts`` in [start, end), time-ordered, exact duplicates removed."""
    t, v, f = _sorted_in_range(parts, start, end)
    distinct = np.ones(len(t), dtype=bool)
    distinct[1:] = (t[1:] != t[:-1]) | (v[1:] != v[:-1])
    return Samples(t[distinct], v[distinct], f[distinct])


def _one_per_time(parts: list[Samples], start: dt.datetime, end: dt.datetime) -> Samples:
    """One source's samples of ``parts`` in [start, end), time-ordered, one per time.

    Storage is idempotent per message (device, seq), not per sample: a device that sends a
    reading again in a later message (a replay after an offline period, with a new seq) has
    it stored twice, and compaction keeps both when they differ. Reads give each time once:
    copies that agree come back as one sample with the flags of all of them; copies that
    disagree as the smallest value flagged CONFLICT (which one is right is not knowable, and
    segments carry no arrival order), so it waits for review like a conflict within a batch.
    """
    t, v, f = _sorted_in_range(parts, start, end)
    first = np.ones(len(t), dtype=bool)
    first[1:] = t[1:] != t[:-1]
    if first.all():
        return Samples(t, v, f)
    starts = np.flatnonzero(first)
    flags = np.bitwise_or.reduceat(f, starts)
    # Sorted by value within a time: the copies disagree when the last differs from the first.
    ends = np.append(starts[1:], len(t)) - 1
    flags[v[ends] != v[starts]] |= np.uint8(Flag.CONFLICT)
    return Samples(t[starts], v[starts], flags.astype(np.uint8))
