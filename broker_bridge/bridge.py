"""Consume telemetry, normalise it a batch at a time, store it, then ack.

A message is acknowledged only after the transaction that stored (or quarantined) it has
committed. If the database is down nothing is acked and the broker keeps the messages in our
persistent session; if the connection drops, messages of the old connection are not acked
and come back on the new one, where idempotent storage makes the repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg
import numpy as np
import numpy.typing as npt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import LeanClient, Message, MqttError
from broker_bridge.gaps import Resender
from broker_bridge.metrics import BridgeStats
from broker_bridge.notices import Notifier, Refusal
from broker_bridge.shared_scale import SharedScales
from devices.broker_config import SHARED_TELEMETRY
from devices.identity import is_device_id
from devices.registry import Device, Registry
from storage.errors import KeyUnavailable
from storage.segments import Samples
from storage.store import Ingested, MessageIn, QuarantineIn, SegmentIn, Store
from vitals.catalogue import METRIC_NAMES
from vitals.errors import PayloadError
from vitals.normalise import (
    CLOCK_AHEAD_FLAG_S,
    NO_SAMPLE_MS,
    Normalised,
    Reject,
    Window,
    normalise,
)
from vitals.senml import CONTENT_TYPE_JSON, DECODERS, Pack

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0  # a bridge fleet must not hammer a broker that is coming back
# InternalClientError: asyncpg's answer on a pooled connection the server dropped.
# KeyUnavailable: a batch met a patient's erasure between the device lookup and the seal;
# tried again, it finds the device unbound and quarantines instead.
_RETRYABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
              asyncpg.InternalClientError, TimeoutError, KeyUnavailable)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_YIELD_EVERY = 64  # messages decoded between two chances for the stored batch to go on


@dataclass(frozen=True)
class BridgeConfig:
    batch_size: int = 500  # large enough to amortise numpy and the transaction
    # How long a batch waits for more messages once it has one. Under load the queue fills
    # while a batch is stored, so batches fill without waiting; this only groups a burst
    # at a low rate, and every reading pays it: 50 ms was a third of the p99.
    batch_wait_s: float = 0.01
    window: Window = field(default_factory=Window)
    retry_max_s: float = 10.0  # longest pause between database retries


class _Decoded(NamedTuple):  # a NamedTuple: one per message, made in a fraction of the time
    message: Message
    device_id: str
    seq: int
    pack: Pack
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A batch decoded, checked and normalised: what its transaction will write."""

    messages: list[MessageIn]
    others: list[MessageIn]  # copies of a number with another payload, stored unnormalised
    shared: set[str]  # shared scales among the senders: weighings to attribute
    quarantined: list[QuarantineIn]
    refusals: list[Refusal]  # told to the devices once the batch has committed
    numbered: list[tuple[str, int, int]]  # (device, epoch, seq) stored or quarantined
    repeats: int  # copies of a message delivered twice within the batch
    reject: npt.NDArray[np.uint8]  # every sample's Reject code
    pack: npt.NDArray[np.int32]  # every sample's message, an index into ``messages``


def _topic_device(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "devices" and parts[2] == "telemetry":
        return parts[1] if is_device_id(parts[1]) else None
    return None


def _user_property(message: Message, name: str) -> str | None:
    props = getattr(message.properties, "UserProperty", None) or []
    for key, value in props:
        if key == name:
            return str(value)
    return None


def sequence_number(message: Message) -> int | None:
    """The device's message number from the ``seq`` user property, or None when absent or
    not a plain decimal that fits a bigint."""
    return _counter(_user_property(message, "seq"))


def epoch_number(message: Message) -> int | None:
    """The device's numbering epoch from the ``epoch`` user property: 0 when absent, None
    when not a plain decimal that fits a bigint. A device whose counter restarts (a reset,
    a wrap) bumps it and numbers from 1 again."""
    text = _user_property(message, "epoch")
    return 0 if text is None else _counter(text)


def _counter(text: str | None) -> int | None:
    # isdigit() alone admits superscripts and other scripts' digits, which int() refuses.
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def _reused(message: Message, device_id: str, epoch: int, seq: int,
            received: dt.datetime) -> QuarantineIn:
    """The quarantine record of a message whose number is taken by other content."""
    return QuarantineIn(device_id, message.topic, received, "sequence_reused",
                        f"epoch {epoch} seq {seq} was stored with another payload",
                        bytes(message.payload))


class Bridge:
    """Takes its MQTT client, store and registry; creates none of them."""

    def __init__(self, client: LeanClient, store: Store, registry: Registry,
                 config: BridgeConfig = BridgeConfig(),
                 clock: Callable[[], float] = time.time,
                 resender: Resender | None = None, notifier: Notifier | None = None) -> None:
        self._client = client
        self._store = store
        self._registry = registry
        self._config = config
        self._clock = clock
        self.resender = resender  # sequence gaps and resend requests; None: not asked
        self.stats = BridgeStats()
        self.notifier = notifier  # refusal notices to devices' inboxes; None: not told
        if notifier is not None:
            self.stats.refusal_notices = notifier.stats
        self._generation = 0  # bumped on every (re)connection
        self._notifying: asyncio.Task[int] | None = None
        self._broker: tuple[str, int] | None = None  # where run() connects

    @property
    def backlog(self) -> int:
        """Messages received and waiting for a batch: the consumer's lag, in messages."""
        return self._client.messages.qsize()

    async def run(self, host: str, port: int, properties: Properties,
                  ready: asyncio.Event | None = None) -> None:
        """Stay connected and consume, forever: reconnect with jittered exponential backoff,
        resuming the persistent session so that unacked messages come back. A consume loop
        that fails is never left connected (the broker would go on handing this worker
        its share of the telemetry, stored by nobody): the worker disconnects, keeping its
        session and what it has not acked, and starts again after the same backoff."""
        self._broker = (host, port)
        delay = crash_delay = RECONNECT_MIN_S
        connections = 0
        while True:
            self._drop_stale_messages()
            try:
                await self._client.connect(host, port, clean_start=False, properties=properties)
                await self._client.subscribe(SHARED_TELEMETRY, qos=1)
            except MqttError as exc:
                self.stats.healthy = False
                log.warning("broker unreachable, retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_MIN_S
            self.stats.reconnects += connections > 0
            connections += 1
            self.stats.connected = True
            if ready is not None:
                ready.set()
            committed = self.stats.batches
            try:
                await self.consume()
            except Exception:
                self.stats.worker_failures += 1
                self.stats.healthy = False
                log.exception("consume loop failed; reconnecting")
                await self._client.disconnect()
                self.stats.connected = False  # and not during the backoff either
                if self.stats.batches > committed:  # it had recovered meanwhile
                    crash_delay = RECONNECT_MIN_S
                await asyncio.sleep(crash_delay * random.uniform(0.5, 1.0))
                crash_delay = min(crash_delay * 2, RECONNECT_MAX_S)
            finally:
                self.stats.connected = False

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect. By default the persistent session stays, with its unacked messages,
        for this client id to resume. ``end_session`` removes it: a bridge retired for good
        must, or its session stays in the shared group and keeps receiving a share of the
        telemetry that nobody consumes until it expires."""
        if self._notifying is not None:
            await asyncio.wait([self._notifying], timeout=5.0)
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
            if not self._client.is_connected and self._broker is not None:
                # Between two connections (a crash backoff, a reconnect): a connection
                # with a clean start is what ends the session the broker keeps.
                with contextlib.suppress(MqttError):
                    await self._client.connect(*self._broker, clean_start=True, timeout=5.0)
        await self._client.disconnect(properties=properties)

    def _drop_stale_messages(self) -> None:
        # Messages of a lost connection cannot be acked on the next one; the broker
        # redelivers them, so the copies still queued here are dropped unacked.
        while not self._client.messages.empty():
            self._client.messages.get_nowait()

    async def consume(self) -> None:
        """Process messages of the current connection until it drops.

        Two batches overlap: while one is stored (its transaction waits on the database
        most of the time), the next is decoded and normalised. One transaction at a time,
        in order, and each batch acked after its own commit."""
        generation = self._generation = self._generation + 1
        storing: asyncio.Task[None] | None = None
        try:
            while self._client.is_connected:
                if self.resender is not None:
                    await self.resender.check(self._client)
                batch = await self._next_batch()
                if not batch:
                    if storing is not None and storing.done():
                        await storing  # its failure surfaces now, not with the next batch
                        storing = None
                    continue
                try:
                    prepared: _Prepared | None = await self._prepare(batch)
                except _RETRYABLE:
                    prepared = None  # prepared again, with the retries, in its turn
                if storing is not None:
                    await storing
                storing = asyncio.create_task(self._store_and_ack(batch, prepared, generation),
                                              name="store-batch")
            if storing is not None:
                await storing
        finally:
            # Cancelled, or failed: a transaction in flight rolls back, nothing of it is acked
            # (and a failure of a batch already over is this one's, or secondary to it).
            if storing is not None:
                storing.cancel()
                await asyncio.gather(storing, return_exceptions=True)

    async def _store_and_ack(self, batch: list[Message], prepared: _Prepared | None,
                             generation: int) -> None:
        await self._process_with_retry(batch, prepared)
        # The client stamps each message with time.monotonic() when it arrives.
        self.stats.receive_to_commit_s.observe(time.monotonic() - batch[0].timestamp)
        if generation != self._generation or not self._client.is_connected:
            return  # acks belong to the old connection; the broker will redeliver
        self._client.ack_many(batch)
        if self.notifier is not None:  # after the acks: a notice never delays one
            # Shielded, and awaited by close(): a DISCONNECT that overtakes our own
            # PUBLISHes in flight left a later shared subscriber without its messages.
            self._notifying = asyncio.create_task(self.notifier.send(self._client),
                                                  name="refusal-notices")
            await asyncio.shield(self._notifying)

    async def _next_batch(self) -> list[Message]:
        queue = self._client.messages
        try:
            first = await asyncio.wait_for(queue.get(), 0.5)
        except TimeoutError:
            return []
        batch = [first]
        deadline = time.monotonic() + self._config.batch_wait_s
        while len(batch) < self._config.batch_size:
            if not queue.empty():  # under load the queue is full: take without waiting
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _process_with_retry(self, batch: list[Message],
                                  prepared: _Prepared | None = None) -> None:
        delay = 0.2
        while True:
            try:
                await self._write(prepared or await self._prepare(batch))
                self.stats.healthy = True
                return
            except _RETRYABLE as exc:
                # Nothing was acked: retrying is safe, and storage is idempotent. The batch
                # is prepared again: a device may have been unpaired or erased meanwhile.
                prepared = None
                self.stats.healthy = False
                log.warning("batch not stored, retrying", extra={"error": type(exc).__name__,
                                                                  "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._config.retry_max_s)

    async def process(self, batch: list[Message]) -> None:
        """Decode, check, normalise and store one batch, in one transaction."""
        await self._write(await self._prepare(batch))

    async def _prepare(self, batch: list[Message]) -> _Prepared:
        """Everything of ``process`` that comes before the transaction and reads nothing
        that the previous batch writes. It yields now and then, so that the batch being
        stored meanwhile goes on as soon as the database answers it."""
        received_at = self._clock()
        received = dt.datetime.fromtimestamp(received_at, dt.UTC)
        quarantined: list[QuarantineIn] = []
        refusals: list[Refusal] = []  # told to the devices once the batch has committed

        def refuse(message: Message, device: str | None, reason: str,
                   detail: str, seq: int | None = None, epoch: int | None = None) -> None:
            quarantined.append(QuarantineIn(device, message.topic, received, reason, detail,
                                            bytes(message.payload)))
            if device is not None:
                refusals.append(Refusal(device, reason, seq, epoch))

        decoded: list[_Decoded] = []
        numbered: list[tuple[str, int, int]] = []  # stored or quarantined: not lost
        for index, message in enumerate(batch):
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            device_id = _topic_device(message.topic)
            if device_id is None:
                refuse(message, None, "bad_topic", "not devices/<id>/telemetry")
                continue
            seq = sequence_number(message)
            if seq is None:
                refuse(message, device_id, "missing_sequence", "no integer 'seq' property")
                continue
            epoch = epoch_number(message)
            if epoch is None:
                refuse(message, device_id, "invalid_epoch", "'epoch' is not an integer", seq)
                continue
            numbered.append((device_id, epoch, seq))
            # MQTT v5 Content Type chooses the representation; JSON when a device omits it.
            content_type = getattr(message.properties, "ContentType", CONTENT_TYPE_JSON)
            decode = DECODERS.get(content_type)
            if decode is None:
                refuse(message, device_id, "unsupported_content_type", str(content_type)[:80],
                       seq, epoch)
                continue
            try:
                pack = decode(bytes(message.payload), received_at=received_at)
            except PayloadError as exc:
                refuse(message, device_id, exc.reason, exc.detail, seq, epoch)
                continue
            decoded.append(_Decoded(message, device_id, seq, pack, epoch))

        devices = await self._registry.lookup(d.device_id for d in decoded)
        accepted: list[_Decoded] = []
        for item in decoded:
            device = devices.get(item.device_id)
            if device is None or not device.may_send:
                state = device.state if device else "unknown"
                refuse(item.message, item.device_id, f"device_{state}",
                       "data from a device that is not paired is not stored", item.seq,
                       item.epoch)
            else:
                accepted.append(item)

        # Normalisation keeps the first copy of a sample a device sent twice: order by
        # sequence number so that it is the earlier message's. A message delivered twice
        # within the batch is normalised once (storage would skip the copy anyway); a copy
        # with another payload goes to storage unnormalised, which tells a reuse (of the
        # first copy, or of what it stored before) from a repeat.
        accepted.sort(key=lambda d: (d.device_id, d.epoch, d.seq))  # stable: arrival order
        repeats = 0
        kept: list[_Decoded] = []
        others: list[MessageIn] = []
        for d in accepted:
            if kept and (d.device_id, d.epoch, d.seq) == (
                    kept[-1].device_id, kept[-1].epoch, kept[-1].seq):
                if d.message.payload == kept[-1].message.payload:
                    repeats += 1
                else:
                    others.append(MessageIn(d.device_id, d.seq, received, [], 0, epoch=d.epoch,
                                            if_reused=_reused(d.message, d.device_id, d.epoch,
                                                              d.seq, received)))
                continue
            kept.append(d)
        accepted = kept
        norm = normalise([d.pack for d in accepted], [received_at] * len(accepted),
                         self._config.window, sources=[d.device_id for d in accepted])
        for i in np.flatnonzero(norm.clock_offset_s > CLOCK_AHEAD_FLAG_S).tolist():
            log.info("device clock ahead; its samples are flagged", extra={
                "device": accepted[i].device_id, "seq": accepted[i].seq,
                "clock_offset_s": round(float(norm.clock_offset_s[i]), 1)})
        await asyncio.sleep(0)
        messages = self._to_messages(accepted, norm, devices, received, quarantined,
                                     refusals)
        return _Prepared(messages, others, {m.device_id for m in messages
                                            if devices[m.device_id].shared},
                         quarantined, refusals, numbered, repeats, norm.reject, norm.pack)

    async def _write(self, prepared: _Prepared) -> None:
        """Store a prepared batch, in one transaction, and count it."""
        messages, quarantined, refusals = (prepared.messages, prepared.quarantined,
                                           prepared.refusals)
        if prepared.shared:  # attributed against what earlier batches stored
            messages = await self._attribute_shared(messages)
        messages = messages + prepared.others  # after their first copies: storage keeps the first
        result: Ingested = await self._store.ingest_batch(messages, quarantined)
        new = result.new
        if self.resender is not None:
            self.resender.seen(prepared.numbered)
        for m in result.reused:
            # A firmware reset or a wrapped counter without a new epoch: ids only.
            log.warning("sequence number reused with another payload; quarantined",
                        extra={"device": m.device_id, "epoch": m.epoch, "seq": m.seq})
        if self.notifier is not None:
            # Refused samples are told once, with the message's first storage.
            self.notifier.refused(
                [r for r in refusals if r.samples is None
                 or (r.device_id, r.epoch, r.seq) in result.fresh]
                + [Refusal(m.device_id, "sequence_reused", m.seq, m.epoch)
                   for m in result.reused])

        # Counted once, with the message's first storage: a redelivered copy is a duplicate,
        # its samples and refusals were counted when it was stored.
        fresh = np.array([m.key in result.fresh for m in prepared.messages], dtype=bool)
        reject = prepared.reject[fresh[prepared.pack]] if len(fresh) else prepared.reject[:0]
        self.stats.batches += 1
        self.stats.messages += new
        self.stats.duplicates += len(messages) - new - len(result.reused) + prepared.repeats
        self.stats.samples += int(np.count_nonzero(reject == Reject.ACCEPTED))
        self.stats.rejected += int(np.count_nonzero(reject != Reject.ACCEPTED))
        self.stats.quarantined += result.quarantined.total()
        self.stats.quarantined_by_reason.update(result.quarantined)
        refused = reject[reject != Reject.ACCEPTED]
        for code, n in enumerate(np.bincount(refused)):
            if n:
                self.stats.rejected_by_reason[Reject(code).name.lower()] += int(n)

    async def _attribute_shared(self, messages: list[MessageIn]) -> list[MessageIn]:
        """Messages of shared scales with each weighing given to its user or held; the
        others unchanged."""
        users = await self._registry.users(m.device_id for m in messages)
        # A redelivered message is stored already: storage skips it, and it is not
        # attributed (nor counted) a second time.
        stored = await self._store.stored_already(
            [m.key for m in messages if len(users.get(m.device_id, ())) > 1])

        def is_new_shared(m: MessageIn) -> bool:
            return len(users.get(m.device_id, ())) > 1 and m.key not in stored

        split = iter(await SharedScales(self._store).split(
            [m for m in messages if is_new_shared(m)], users, self.stats.shared_scale_weighings))
        return [next(split) if is_new_shared(m) else m for m in messages]

    def _to_messages(self, accepted: list[_Decoded], norm: Normalised,
                     devices: dict[str, Device], received: dt.datetime,
                     quarantined: list[QuarantineIn], refusals: list[Refusal]
                     ) -> list[MessageIn]:
        messages: list[MessageIn] = []
        # One sort groups every sample by (message, metric, time); the accepted ones,
        # gathered once, are cut into runs of one (message, metric): each a segment whose
        # columns are views, not copies.
        order = np.lexsort((norm.t_ms, norm.metric, norm.pack))
        taken = order[norm.reject[order] == Reject.ACCEPTED]
        pack_of, metric_of = norm.pack[taken], norm.metric[taken]
        t_ms, value, flags = norm.t_ms[taken], norm.value[taken], norm.flags[taken]
        cuts = np.flatnonzero((pack_of[1:] != pack_of[:-1]) | (metric_of[1:] != metric_of[:-1]))
        run_start = np.concatenate(([0], cuts + 1)).tolist() if len(taken) else []
        run_end = [*run_start[1:], len(taken)] if len(taken) else []
        runs: dict[int, list[tuple[int, int, int]]] = {}
        for pack, metric, start, end in zip(pack_of[run_start].tolist(),
                                            metric_of[run_start].tolist(), run_start, run_end,
                                            strict=True):
            runs.setdefault(pack, []).append((metric, start, end))
        refused = np.bincount(norm.pack[norm.reject != Reject.ACCEPTED],
                              minlength=len(accepted)).tolist()
        pack_sorted = norm.pack[order]
        firsts, lasts = norm.first_ms.tolist(), norm.last_ms.tolist()
        for i, item in enumerate(accepted):
            patient_id = devices[item.device_id].patient_id
            assert patient_id is not None  # may_send checked it
            segments = [SegmentIn(patient_id, METRIC_NAMES[metric], Samples(
                t_ms[start:end], value[start:end], flags[start:end]))
                for metric, start, end in runs.get(i, ())]
            bad = np.empty(0, dtype=np.intp)
            if refused[i]:  # in the sort's order, as the quarantine record lists them
                mine = order[bisect_left(pack_sorted, i):bisect_left(pack_sorted, i + 1)]
                bad = mine[norm.reject[mine] != Reject.ACCEPTED]
            if len(bad):
                # Rejected samples are kept, sealed, with their reasons: nothing measured
                # disappears without a record.
                reasons = [Reject(int(r)).name.lower() for r in norm.reject[bad]]
                record = [[item.pack.metrics[j], item.pack.units[j], item.pack.times[j],
                           item.pack.values[j], reason]
                          for j, reason in zip(self._local_index(bad, norm, i), reasons,
                                               strict=True)]
                quarantined.append(QuarantineIn(
                    item.device_id, item.message.topic, received,
                    "rejected_samples", f"{len(bad)} of {len(item.pack)}: {sorted(set(reasons))}",
                    json.dumps(record).encode(), seq=item.seq, epoch=item.epoch))
                refusals.append(Refusal(item.device_id, "rejected_samples", item.seq,
                                        item.epoch, Counter(reasons)))
            seen = firsts[i] != NO_SAMPLE_MS
            messages.append(MessageIn(
                item.device_id, item.seq, received, segments, len(bad),
                first_sample_at=_EPOCH + dt.timedelta(0, 0, 0, firsts[i]) if seen else None,
                last_sample_at=_EPOCH + dt.timedelta(0, 0, 0, lasts[i]) if seen else None,
                raw_units=norm.raw_units.get(i), epoch=item.epoch,
                if_reused=_reused(item.message, item.device_id, item.epoch, item.seq,
                                  received)))
        return messages

    @staticmethod
    def _local_index(global_idx: np.ndarray, norm: Normalised, pack: int) -> list[int]:
        # Position of a sample inside its own pack: its global index minus the pack's start.
        start = int(np.searchsorted(norm.pack, pack))
        return [int(g) - start for g in global_idx]
