"""Sequence gaps per device, and the resend requests that close them.

A PUBACK from the broker does not mean a message is stored (ARCHITECTURE.md, decision 1): a
broker crash before its autosave loses acknowledged messages. Devices number their messages
and keep the acknowledged ones for a while (a replay window); the bridge notices numbers that
never arrived and asks the device for them on its inbox topic.

``GapTracker`` is pure bookkeeping: which numbers below the highest seen are missing, since
when, and when they were last asked for. ``Resender`` adds the I/O: before asking it checks
the database (another bridge worker on the shared subscription may have stored the message),
and it publishes ``{"resend": [[from, to], ...]}`` (inclusive ranges) at QoS 1 to
``devices/<id>/inbox``. A repeat that arrives is harmless: storage is idempotent.

A worker knows only what it saw since it started. On first sight of a device it asks the
database for the highest number stored below the first one it saw, so that a gap across a
bridge restart is found too, with one indexed lookup per device and worker lifetime.

A device numbers its messages from 1 within an *epoch* (the ``epoch`` user property, 0 when
absent); a device whose counter restarts bumps its epoch. Each (device, epoch) is its own
``Stream``: a new epoch starting at 1 is neither a giant gap nor a regression, and the
requests for it name it (``"epoch": n``, absent for 0). An older epoch's outstanding gaps
are still asked for, until filled or given up as any gap (the device keeps older epochs'
messages in its replay window); an older epoch with no gap left is forgotten.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import asyncpg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import Client, MqttError
from devices.broker_config import inbox_topic

log = logging.getLogger(__name__)

Range = tuple[int, int]  # inclusive


class Stream(NamedTuple):
    """One numbering: a device's messages within one epoch."""

    device_id: str
    epoch: int = 0


@dataclass(frozen=True)
class GapConfig:
    # Reordering that is not loss: a redelivery after a bridge reconnect, two workers on one
    # shared subscription, a batch retried while the database restarts. Seconds, not minutes.
    grace_s: float = 10.0
    retry_s: float = 30.0  # ask again when a request (or its answer) went astray
    max_requests: int = 5  # then give up: the device no longer has the message
    check_every_s: float = 1.0  # the cost of a check is one query, whatever the fleet
    max_ranges: int = 64  # per device; beyond it the oldest gaps are given up
    max_devices_per_check: int = 500  # bounds one query and one burst of requests


@dataclass
class _Gap:
    lo: int
    hi: int
    since: float
    asked_at: float | None = None
    asks: int = 0


@dataclass
class _Device:
    high: int
    lowest: int  # the lowest number seen; what lies below it is settled by ``seeded``
    seeded: bool = False
    gaps: list[_Gap] = field(default_factory=list)  # disjoint, sorted by lo


@dataclass
class GapStats:
    requests: int = 0  # resend requests published
    ranges_asked: int = 0
    given_up: int = 0  # sequence numbers abandoned after max_requests (or max_ranges)
    filled: int = 0  # numbers that arrived after being counted missing


class GapTracker:
    """Missing sequence numbers per stream (device and epoch). Pure and synchronous; times
    are arguments."""

    def __init__(self, config: GapConfig = GapConfig()) -> None:
        self.config = config
        self.stats = GapStats()
        self._devices: dict[Stream, _Device] = {}
        self._latest: dict[str, int] = {}  # device id -> its highest epoch seen

    def seen(self, stream: Stream, seq: int, now: float) -> None:
        """``seq`` of ``stream`` is accounted for (stored, or quarantined with a reason)."""
        state = self._devices.get(stream)
        if state is None:
            self._devices[stream] = _Device(high=seq, lowest=seq)
            if stream.epoch > self._latest.get(stream.device_id, -1):
                self._latest[stream.device_id] = stream.epoch
                self._forget_settled_epochs(stream.device_id)
            return
        if seq > state.high:
            if seq > state.high + 1:
                state.gaps.append(_Gap(state.high + 1, seq - 1, now))
                self._bound(stream, state)
            state.high = seq
        elif seq < state.lowest and not state.seeded:
            # Below what this worker saw first, before seeding: it only lowers the mark.
            if seq < state.lowest - 1:
                self._insert(state, _Gap(seq + 1, state.lowest - 1, now))
            state.lowest = seq
        else:
            self.settle(stream, seq, seq)

    def settle(self, stream: Stream, lo: int, hi: int) -> None:
        """Every number in [lo, hi] is accounted for (known stored, say by the database)."""
        state = self._devices.get(stream)
        if state is None:
            return
        pieces: list[_Gap] = []
        for gap in state.gaps:
            if gap.hi < lo or gap.lo > hi:
                pieces.append(gap)
                continue
            self.stats.filled += min(gap.hi, hi) - max(gap.lo, lo) + 1
            if gap.lo < lo:
                pieces.append(_Gap(gap.lo, lo - 1, gap.since, gap.asked_at, gap.asks))
            if gap.hi > hi:
                pieces.append(_Gap(hi + 1, gap.hi, gap.since, gap.asked_at, gap.asks))
        state.gaps = pieces

    def unseeded(self) -> dict[Stream, int]:
        """Streams whose history before their first seen number is not known yet:
        stream -> the lowest number seen."""
        return {d: s.lowest for d, s in self._devices.items() if not s.seeded}

    def seed(self, stream: Stream, stored_below: int | None, now: float) -> None:
        """The highest number stored before this worker started (None: nothing, so the
        stream's numbering, which starts at 1, is missing from 1)."""
        state = self._devices.get(stream)
        if state is None or state.seeded:
            return
        state.seeded = True
        floor = stored_below if stored_below is not None else 0
        if floor < state.lowest - 1:
            self._insert(state, _Gap(floor + 1, state.lowest - 1, now))
            self._bound(stream, state)

    def missing(self, stream: Stream) -> list[Range]:
        state = self._devices.get(stream)
        return [(g.lo, g.hi) for g in state.gaps] if state else []

    def due(self, now: float) -> dict[Stream, list[Range]]:
        """Gaps old enough to ask about, and not asked about recently. Gaps asked
        ``max_requests`` times are given up here (and logged)."""
        cfg = self.config
        found: dict[Stream, list[Range]] = {}
        for stream, state in self._devices.items():
            if not state.gaps:
                continue
            kept = []
            for gap in state.gaps:
                if gap.asks >= cfg.max_requests and now - (gap.asked_at or now) >= cfg.retry_s:
                    self.stats.given_up += gap.hi - gap.lo + 1
                    log.warning("resend given up", extra={
                        "device": stream.device_id, "epoch": stream.epoch, "from": gap.lo,
                        "to": gap.hi})
                    continue
                kept.append(gap)
                if now - gap.since < cfg.grace_s or gap.asks >= cfg.max_requests:
                    continue
                if gap.asked_at is not None and now - gap.asked_at < cfg.retry_s:
                    continue
                found.setdefault(stream, []).append((gap.lo, gap.hi))
            state.gaps = kept
            if len(found) >= cfg.max_devices_per_check:
                break
        for device_id in {s.device_id for s, state in self._devices.items()
                          if not state.gaps and state.seeded
                          and s.epoch < self._latest[s.device_id]}:
            self._forget_settled_epochs(device_id)
        return found

    def asked(self, stream: Stream, ranges: Iterable[Range], now: float) -> list[Range]:
        """Mark the gaps still open inside ``ranges`` as asked for now; returns them."""
        state = self._devices.get(stream)
        if state is None:
            return []
        marked = []
        for lo, hi in ranges:
            for gap in state.gaps:
                if gap.lo >= lo and gap.hi <= hi:
                    gap.asked_at, gap.asks = now, gap.asks + 1
                    marked.append((gap.lo, gap.hi))
        return marked

    def forget(self, stream: Stream) -> None:
        self._devices.pop(stream, None)

    def _forget_settled_epochs(self, device_id: str) -> None:
        # An older epoch is still tracked while it has gaps to ask for (or may have: not
        # seeded yet); then it goes.
        latest = self._latest[device_id]
        for stream in [s for s, state in self._devices.items()
                       if s.device_id == device_id and s.epoch < latest and state.seeded
                       and not state.gaps]:
            del self._devices[stream]

    @staticmethod
    def _insert(state: _Device, gap: _Gap) -> None:
        bisect.insort(state.gaps, gap, key=lambda g: g.lo)

    def _bound(self, stream: Stream, state: _Device) -> None:
        while len(state.gaps) > self.config.max_ranges:
            oldest = state.gaps.pop(0)
            self.stats.given_up += oldest.hi - oldest.lo + 1
            log.warning("too many gaps, oldest given up",
                        extra={"device": stream.device_id, "epoch": stream.epoch,
                               "from": oldest.lo, "to": oldest.hi})


def resend_request(ranges: Iterable[Range], epoch: int = 0) -> bytes:
    """The inbox payload a device honours: ``{"resend": [[from, to], ...]}``, with
    ``"epoch": n`` when the numbers are of an epoch other than 0."""
    body: dict[str, object] = {"resend": [[lo, hi] for lo, hi in ranges]}
    if epoch:
        body["epoch"] = epoch
    return json.dumps(body, separators=(",", ":")).encode()


def _json_properties() -> Properties:
    # asyncapi.yaml: every JSON message on the inbox says so in its content type.
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    return props


class Ledger(Protocol):
    """What the database knows of sequence numbers (the ledger: ingested_messages and its
    compacted runs, ingested_ranges)."""

    async def stored_below(self, firsts: dict[Stream, int]) -> dict[Stream, int | None]: ...

    async def stored_in(self, ranges: dict[Stream, list[Range]]
                        ) -> dict[Stream, list[Range]]: ...


class PgLedger:
    """``Ledger`` over the message rows and their compacted runs; two indexed queries,
    each one per check."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def stored_below(self, firsts: dict[Stream, int]) -> dict[Stream, int | None]:
        rows = await self._pool.fetch(
            """SELECT r.d, r.e, greatest(
                   (SELECT max(i.seq) FROM ingested_messages i
                    WHERE i.device_id = r.d AND i.epoch = r.e AND i.seq < r.s),
                   (SELECT least(g.seq_hi, r.s - 1) FROM ingested_ranges g
                    WHERE g.device_id = r.d AND g.epoch = r.e AND g.seq_lo < r.s
                    ORDER BY g.seq_lo DESC LIMIT 1)) AS below
               FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(d, e, s)""",
            [s.device_id for s in firsts], [s.epoch for s in firsts], list(firsts.values()))
        return {Stream(r["d"], r["e"]): r["below"] for r in rows}

    async def stored_in(self, ranges: dict[Stream, list[Range]]
                        ) -> dict[Stream, list[Range]]:
        """Runs of stored numbers inside the given ranges (gaps and islands, in SQL, so
        that a long run costs one row): message rows and compacted runs, clipped, merged
        where they touch."""
        devices, epochs, los, his = [], [], [], []
        for stream, spans in ranges.items():
            for lo, hi in spans:
                devices.append(stream.device_id)
                epochs.append(stream.epoch)
                los.append(lo)
                his.append(hi)
        rows = await self._pool.fetch(
            """WITH r AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[],
                                              $4::bigint[]) AS r(d, e, lo, hi)),
               pieces AS (
                   SELECT i.device_id, i.epoch, i.seq AS lo, i.seq AS hi
                   FROM r JOIN ingested_messages i ON i.device_id = r.d AND i.epoch = r.e
                                                  AND i.seq BETWEEN r.lo AND r.hi
                   UNION
                   SELECT g.device_id, g.epoch, greatest(g.seq_lo, r.lo), least(g.seq_hi, r.hi)
                   FROM r JOIN ingested_ranges g ON g.device_id = r.d AND g.epoch = r.e
                                                AND g.seq_lo <= r.hi AND g.seq_hi >= r.lo),
               -- A piece starts an island unless an earlier one reaches up to it.
               marked AS (
                   SELECT *, CASE WHEN lo <= max(hi) OVER (
                                  PARTITION BY device_id, epoch ORDER BY lo, hi
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + 1
                             THEN 0 ELSE 1 END AS starts
                   FROM pieces),
               islands AS (
                   SELECT *, sum(starts) OVER (PARTITION BY device_id, epoch
                                               ORDER BY lo, hi) AS island
                   FROM marked)
               SELECT device_id, epoch, min(lo) AS lo, max(hi) AS hi FROM islands
               GROUP BY device_id, epoch, island""", devices, epochs, los, his)
        found: dict[Stream, list[Range]] = {}
        for r in rows:
            found.setdefault(Stream(r["device_id"], r["epoch"]), []).append(
                (int(r["lo"]), int(r["hi"])))
        return found


class Resender:
    """Feeds a ``GapTracker`` and asks devices for what is missing.

    The bridge calls ``seen`` after a batch committed, and ``check`` from its consume loop;
    ``check`` does its work at most every ``check_every_s`` and never raises for a
    database or broker hiccup (the next check tries again).
    """

    def __init__(self, tracker: GapTracker, ledger: Ledger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tracker = tracker
        self._ledger = ledger
        self._clock = clock
        self._last_check = clock()

    def seen(self, numbers: Iterable[tuple[str, int, int]]) -> None:
        """These (device id, epoch, seq) are accounted for."""
        now = self._clock()
        for device_id, epoch, seq in numbers:
            self.tracker.seen(Stream(device_id, epoch), seq, now)

    async def check(self, client: Client) -> int:
        """Seed, confirm against the database, publish requests; returns how many."""
        now = self._clock()
        if now - self._last_check < self.tracker.config.check_every_s:
            return 0
        self._last_check = now
        try:
            return await self._check(client, now)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError,
                MqttError) as exc:
            log.warning("gap check failed, will retry", extra={"error": type(exc).__name__})
            return 0

    async def _check(self, client: Client, now: float) -> int:
        tracker = self.tracker
        unseeded = tracker.unseeded()
        if unseeded:
            limit = tracker.config.max_devices_per_check
            firsts = dict(list(unseeded.items())[:limit])
            for stream, below in (await self._ledger.stored_below(firsts)).items():
                tracker.seed(stream, below, now)
        due = tracker.due(now)
        if not due:
            return 0
        # Another worker may have stored some of them: those are not asked for.
        for stream, islands in (await self._ledger.stored_in(due)).items():
            for lo, hi in islands:
                tracker.settle(stream, lo, hi)
        requests = {}
        for stream, ranges in due.items():
            asking = tracker.asked(stream, ranges, now)
            if asking:
                requests[stream] = asking
        # Concurrently: the consume loop waits for this, and each PUBACK is a round trip.
        # A request that fails is asked again after retry_s, like one that went unanswered.
        await asyncio.gather(*(
            client.publish(inbox_topic(s.device_id), resend_request(r, s.epoch), qos=1,
                           properties=_json_properties(), timeout=5.0)
            for s, r in requests.items()))
        for stream, asking in requests.items():
            tracker.stats.requests += 1
            tracker.stats.ranges_asked += len(asking)
            log.info("resend requested", extra={"device": stream.device_id,
                                                "epoch": stream.epoch, "ranges": len(asking)})
        return len(requests)
