"""One simulated device: its key and CSR, an MQTT v5 mTLS session, a numbered outbox.

A message is written to the durable outbox (firmware_sim.outbox) before it is published, and
leaves it only when the broker's PUBACK carries a success code, so a refused or unanswered
message is sent again, by this process or by the next one started on the same flash. The
ledger counts what the broker accepted: it is what a loss check compares with the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient, MqttError, stop_task
from firmware_sim import artefacts
from firmware_sim.outbox import Message, Outbox
from firmware_sim.renewal_policy import ANSWER_TIMEOUT_S, ATTEMPTS, RenewalPolicy
from vitals.senml import CONTENT_TYPE_JSON, encode_json

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
Issuer = Callable[[bytes], Awaitable[bytes]]  # CSR PEM in, certificate PEM out


@dataclass
class Ledger:
    """What this device did since it was started (not across restarts: the database is the
    ledger that survives). ``messages`` and ``samples`` count first acknowledgements only, so
    they can be compared with what was stored; resends are counted apart."""

    messages: int = 0  # acknowledged by the broker (or, under a fault, pretended so)
    samples: int = 0
    refused: int = 0  # PUBACKs with a failure reason code (the message stays queued)
    sent: int = 0  # PUBLISH packets sent, repeats and resends included
    resent: int = 0  # messages published again because the backend asked
    echoed: int = 0  # last acknowledged message published again on (re)connecting
    resend_requests: int = 0
    renewals: int = 0  # certificates renewed (and used from the next connection)
    renewal_failures: int = 0  # renewal exchanges that failed or were refused
    # The outbox is sent in order, so what was acknowledged since start is one range (of
    # the current epoch: reset_counter starts it again).
    first_acked: int | None = None
    last_acked: int | None = None
    # Sensor artefacts injected (Faults), as sent: the ground truth to compare with storage.
    spikes: list[tuple[float, float]] = field(default_factory=list)  # (time, heart rate)
    dips: list[tuple[float, float]] = field(default_factory=list)  # (time, SpO2)
    not_taken: list[tuple[str, float]] = field(default_factory=list)  # (metric, time)
    # The payloads of the messages counted in ``messages``, as published (faults applied):
    # what a check compares with storage sample by sample (healthiot/simulate.py sets a
    # list). About 50 bytes a sample for the life of the device object, so None, not
    # recorded, unless asked: `make run`'s demo fleet runs for days.
    payloads: list[bytes] | None = None

    def acknowledged(self, message: Message) -> None:
        """Count ``message``, acknowledged for the first time."""
        self.messages += 1
        self.samples += message.samples
        if self.payloads is not None:
            self.payloads.append(message.payload)
        if self.first_acked is None:
            self.first_acked = message.seq
        self.last_acked = message.seq


@dataclass
class Faults:
    """Misbehaviour on demand, each with a documented backend reaction.

    ``lost_after_ack``: sequence numbers the broker "acknowledges and then loses" (as a
    broker crash before its autosave would): the device counts them as delivered and keeps
    them in its replay window; the bridge finds the gap and asks for them.
    ``duplicate_every``: every n-th message is published twice (a retransmission after a
    lost PUBACK); storage keeps one.
    ``clock_offset_s``: the device clock is off by this much; a small skew is stored with
    device time, a clock reset to 2000-01-01 (``CLOCK_RESET``) is outside the acceptance
    window and goes to quarantine.

    A misbehaving device (tests/integration/test_misbehaving_devices.py shows each reaction):
    ``foreign_device``: telemetry published on that device's topic; the broker's ACL refuses
    it (MQTT v5 PUBACK 0x87, the session stays up), so it stays in the outbox, counted as
    refused. ``payload_bytes``: each payload padded to this size (a string record); above
    the broker's packet limit the broker drops the connection (no PUBACK), above the SenML
    limit the bridge quarantines it as ``oversized``. ``malformed``: payloads that are not
    SenML; quarantined as ``malformed``. ``client_id``: the MQTT client id used
    (another device's takes its session over; the takeover watcher records it).
    ``counter_reset_every``: after every n-th message the firmware's counter restarts at 1
    (a reset, a counter that wraps) under a new epoch; the backend stores both numberings.

    Sensor artefacts (firmware_sim/artefacts.py; README "Normalisation" says what the
    backend does with each): ``hr_spike_every_s``: about this often one heart-rate sample
    is absurd (250-295 /min: stored, flagged; or 0: rejected as impossible, quarantined).
    ``spo2_dip_every_s``: about this often the SpO2 samples of 3 s drop to 60-75 % (stored,
    flagged). ``dropout_every_s`` and ``dropout_s``: about this often the sensor takes no
    sample at all for ``dropout_s`` seconds (a gap, no zeros). Each lands in the ledger.
    """

    lost_after_ack: set[int] = field(default_factory=set)
    duplicate_every: int = 0
    clock_offset_s: float = 0.0
    foreign_device: str | None = None
    payload_bytes: int = 0
    malformed: bool = False
    client_id: str | None = None
    counter_reset_every: int = 0
    hr_spike_every_s: float = 0.0
    spo2_dip_every_s: float = 0.0
    dropout_every_s: float = 0.0
    dropout_s: float = 0.0
    _artefacts: artefacts.Schedule = field(default_factory=artefacts.Schedule)

    def sensor(self, records: list[tuple[str, str, float, float]], rng: random.Random,
               ledger: Ledger) -> list[tuple[str, str, float, float]]:
        """What a faulty sensor makes of ``records``: the artefacts due in them, each
        written to ``ledger``."""
        if not (self.hr_spike_every_s or self.spo2_dip_every_s or self.dropout_every_s):
            return records  # no fault: not a draw from the device's generator either
        records, injected = artefacts.inject(
            records, rng, self._artefacts, hr_spike_every_s=self.hr_spike_every_s,
            spo2_dip_every_s=self.spo2_dip_every_s, dropout_every_s=self.dropout_every_s,
            dropout_s=self.dropout_s)
        ledger.spikes += injected.spikes
        ledger.dips += injected.dips
        ledger.not_taken += injected.not_taken
        return records

    def payload(self, payload: bytes) -> bytes:
        """What a misbehaving device makes of a well-formed payload."""
        if self.malformed:
            return b'{"bn": "' + payload[:40]  # cut short: neither JSON nor SenML
        if self.payload_bytes > len(payload):
            # A JSON array stays one: the padding is a record with a string value.
            pad = self.payload_bytes - len(payload) - len(b',{"vs":""}')
            return payload[:-1] + b',{"vs":"' + b"x" * max(0, pad) + b'"}]'
        return payload


def reset_clock_offset(now: float) -> float:
    """The offset of a clock that restarted at 2000-01-01T00:00:00Z when ``now`` began."""
    return 946_684_800.0 - now


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    ca_file: Path


class Flash:
    """The device's persistent storage: its key, its certificate and its outbox."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def key_file(self) -> Path:
        return self.directory / "device.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "device.pem"

    @property
    def outbox_file(self) -> Path:
        return self.directory / "outbox.sqlite3"

    def load_seq(self) -> int:
        """The next number saved by firmware without a durable outbox (state.json)."""
        try:
            return int(json.loads((self.directory / "state.json").read_text())["next_seq"])
        except (OSError, ValueError, KeyError):
            return 1


async def enrol(flash: Flash, device_id: str, issue: Issuer) -> None:
    """Make a key on the device (once), send a CSR, keep the certificate that comes back."""
    if flash.cert_file.exists() and flash.key_file.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(flash.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    flash.cert_file.write_bytes(await issue(csr.public_bytes(serialization.Encoding.PEM)))


class SimulatedDevice:
    """Base of the device models: connection, outbox and ledger. Subclasses make readings.

    The outbox is opened from ``flash`` at construction; ``close()`` releases it. A device
    object made again from the same flash continues where the last one stopped.
    """

    model = "device"

    def __init__(self, device_id: str, flash: Flash, broker: Broker, *,
                 interval_s: float, rng: random.Random | None = None,
                 faults: Faults | None = None,
                 renewal_policy: RenewalPolicy | None = None) -> None:
        self.device_id = device_id
        self.flash = flash
        self.broker = broker
        self.interval_s = interval_s
        self.rng = rng or random.Random()
        self.faults = faults or Faults()
        self.ledger = Ledger()
        self._conn: AsyncClient | None = None  # the live connection, while delivering
        self._outbox = Outbox(flash.outbox_file, first_seq=flash.load_seq())
        self._resend: deque[Message] = deque()  # asked for by the backend, sent first
        self._wake = asyncio.Event()
        self._announce = False  # echo the last acknowledged message on the live connection
        self.renewal_policy = renewal_policy or RenewalPolicy(self.rng)
        self._reconnect = False  # a renewed certificate waits for the next connection
        self._connected = asyncio.Event()  # set at each connection
        # Inbox messages that answer a renewal CSR (they carry its correlation data).
        self._renewal_answers: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue(maxsize=10)

    @property
    def online(self) -> bool:
        """Connected to the broker right now."""
        return self._conn is not None and self._conn.is_connected

    @property
    def pending(self) -> int:
        """Messages on flash that the broker has not accepted yet."""
        return len(self._outbox)

    @property
    def next_seq(self) -> int:
        return self._outbox.next_seq

    @property
    def epoch(self) -> int:
        """The numbering epoch of the next message (sent as the ``epoch`` user property)."""
        return self._outbox.epoch

    def reset_counter(self) -> None:
        """The firmware's counter restarts at 1 (a reset, a wrap) under a new epoch, so the
        backend does not take the new numbers for repeats of the old ones."""
        self._outbox.new_epoch()
        self.ledger.first_acked = self.ledger.last_acked = None

    @property
    def telemetry_topic(self) -> str:
        return f"devices/{self.faults.foreign_device or self.device_id}/telemetry"

    @property
    def inbox_topic(self) -> str:
        return f"devices/{self.device_id}/inbox"

    def announce(self) -> None:
        """Publish the last acknowledged message again soon, on the live connection (as on
        every reconnection, see ``_echo_last``): what a device sends when it ends an upload
        session, so that a loss at the very end of what it sent is seen as a gap."""
        self._announce = True
        self._wake.set()

    def close(self) -> None:
        """Release the flash (the outbox stays on it)."""
        self._outbox.close()

    def readings(self, start: float, end: float) -> list[tuple[str, str, float, float]]:
        """(metric, unit, Unix time, value) records measured in [start, end)."""
        raise NotImplementedError

    def measure(self, start: float, end: float) -> Message | None:
        """Take the readings of a period into the outbox under the next sequence number."""
        records = self.readings(start, end)
        if not records:
            return None
        offset = self.faults.clock_offset_s
        if offset:
            records = [(m, u, round(t + offset, 3), v) for m, u, t, v in records]
        records = self.faults.sensor(records, self.rng, self.ledger)
        if not records:
            return None  # the sensor took nothing in the whole period
        payload = self.faults.payload(encode_json(f"{self.device_id}/", records))
        message = self._outbox.add(payload, len(records))
        every = self.faults.counter_reset_every
        if every and message.seq % every == 0:
            self.reset_counter()
        self._wake.set()
        return message

    async def run(self, stop: asyncio.Event, serve_until: asyncio.Event | None = None) -> None:
        """Measure every ``interval_s`` until ``stop``, and deliver in the background; with
        ``serve_until``, then stay connected as ``serve`` does, on the same connection (a
        fleet that stopped measuring does not reconnect all at once)."""
        sender = asyncio.create_task(self._deliver_forever(), name=f"send-{self.device_id}")
        renewer = asyncio.create_task(self._renew_forever(), name=f"renew-{self.device_id}")
        try:
            last = time.time()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass
                now = time.time()
                if not stop.is_set():
                    self.measure(last, now)
                last = now
            if serve_until is not None:
                await serve_until.wait()
        finally:
            await stop_task(renewer)
            await stop_task(sender)

    async def serve(self, stop: asyncio.Event) -> None:
        """Stay connected without measuring until ``stop``: deliver what is queued and
        honour resend requests (what a device does after its wearer took it off)."""
        sender = asyncio.create_task(self._deliver_forever(), name=f"serve-{self.device_id}")
        renewer = asyncio.create_task(self._renew_forever(), name=f"renew-{self.device_id}")
        try:
            await stop.wait()
        finally:
            await stop_task(renewer)
            await stop_task(sender)  # a publish cut short leaves its message in the outbox

    async def flush(self, timeout: float) -> None:
        """Deliver whatever the outbox still holds, within ``timeout`` seconds."""
        deliver = asyncio.create_task(self._deliver_forever(until_empty=True),
                                      name=f"flush-{self.device_id}")
        await asyncio.wait({deliver}, timeout=timeout)
        if not deliver.done():
            await stop_task(deliver)
            log.warning("outbox not empty at flush", extra={"device": self.device_id,
                                                             "pending": self.pending})

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.broker.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.flash.cert_file), str(self.flash.key_file))
        return context

    async def _deliver_forever(self, until_empty: bool = False) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=self.faults.client_id or self.device_id,
                             protocol=mqtt.MQTTv5)
        context = self._tls()
        client.tls_set_context(context)
        conn = self._conn = AsyncClient(client, queue_size=100)
        inbox = asyncio.create_task(self._serve_inbox(conn), name=f"inbox-{self.device_id}")
        delay = RECONNECT_MIN_S
        try:
            while not (until_empty and not self._outbox and not self._resend):
                if not conn.is_connected:
                    try:
                        # Read again at each connection: a renewed certificate
                        # (firmware_sim/renewal.py) is used from the next one on.
                        context.load_cert_chain(str(self.flash.cert_file),
                                                str(self.flash.key_file))
                        self._reconnect = False
                        await conn.connect(self.broker.host, self.broker.port, keepalive=30)
                        await conn.subscribe(self.inbox_topic, qos=1)
                        delay = RECONNECT_MIN_S
                        self._connected.set()
                        await self._echo_last(conn)
                    except (MqttError, ssl.SSLError):  # SSLError: a key and cert mid-swap
                        await conn.disconnect()
                        # Full jitter: after a broker restart a fleet's retries spread over
                        # the whole window instead of arriving together (a thundering herd).
                        await asyncio.sleep(self.rng.uniform(0.0, delay))
                        delay = min(delay * 2, RECONNECT_MAX_S)
                        continue
                if self._reconnect:
                    # Renewed: reconnect now, between two publishes (none is in flight), so
                    # that the new certificate is in use long before the old one ends.
                    self._reconnect = False
                    await conn.disconnect()
                    continue
                if self._resend:
                    await self._resend_one(conn)
                    continue
                if self._announce:
                    self._announce = False
                    await self._echo_last(conn)
                    continue
                if not self._outbox:
                    # Idle: wake for a new reading, or reconnect at once when the connection
                    # drops (the inbox must stay reachable).
                    self._wake.clear()
                    await _first_of(self._wake, conn.disconnected)
                    continue
                await self._send_one(conn)
        finally:
            await stop_task(inbox)
            await conn.disconnect()

    async def _serve_inbox(self, conn: AsyncClient) -> None:
        while True:
            message = await conn.messages.get()
            if getattr(message.properties, "CorrelationData", None) is not None:
                with contextlib.suppress(asyncio.QueueFull):  # none is waiting: a stale one
                    self._renewal_answers.put_nowait(message)
                continue
            if message.topic == self.inbox_topic:
                self.on_request(bytes(message.payload))

    def on_request(self, payload: bytes) -> int:
        """Honour a backend request from the inbox; returns how many messages it queued.

        ``{"resend": [[from, to], ...], "epoch": n}``: the acknowledged messages of epoch n
        (0 when absent) still in the replay window are published again with their original
        numbers. Anything else is ignored
        (a device does not crash on what its inbox brings).
        """
        request = _resend_request(payload)
        if request is None:
            log.warning("inbox message ignored", extra={"device": self.device_id})
            return 0
        epoch, ranges = request
        self.ledger.resend_requests += 1
        queued = {(m.epoch, m.seq) for m in self._resend}
        fresh = [m for m in self._outbox.replay(ranges, epoch=epoch)
                 if (m.epoch, m.seq) not in queued]
        self._resend.extend(fresh)
        if fresh:
            self._wake.set()
        return len(fresh)

    async def _renew_forever(self) -> None:
        """Renew the certificate at the policy's moment, for as long as the device runs; a
        failed exchange is tried again with backoff, a refusal after a long wait. The new
        certificate is used from a reconnection between two publishes."""
        from firmware_sim.renewal import RenewalFailed  # it imports this module
        policy = self.renewal_policy
        failures = 0
        delay: float | None = None  # None: until the current certificate's moment
        while True:
            await asyncio.sleep(self._until_renewal() if delay is None else delay)
            try:
                await self.renew_certificate(answer_timeout_s=policy.answer_timeout_s,
                                             attempts=policy.attempts)
            except (RenewalFailed, MqttError, OSError, ValueError) as exc:
                self.ledger.renewal_failures += 1
                reason = exc.reason if isinstance(exc, RenewalFailed) else None
                if reason is not None:  # the renewer said no: it will not change its mind soon
                    failures, delay = 0, policy.refused_delay()
                else:  # no answer, no broker, an answer that is not for our key
                    failures += 1
                    delay = policy.retry_delay(failures)
                log.warning("certificate renewal failed", extra={
                    "device": self.device_id, "reason": reason or type(exc).__name__,
                    "retry_in_s": round(delay)})
                continue
            failures, delay = 0, None

    async def renew_certificate(self, *, answer_timeout_s: float = ANSWER_TIMEOUT_S,
                                attempts: int = ATTEMPTS) -> bytes:
        """Renew the certificate now, over the device's one session (waiting for it);
        returns the new certificate, installed and used from a reconnection between two
        publishes. Raises firmware_sim.renewal.RenewalFailed or MqttError."""
        from firmware_sim.renewal import renew_on  # it imports this module
        while not self.online:
            # Renewal needs the broker too: a device that cannot reach it waits for its
            # connection rather than count failures (and renews, then switches, on it).
            self._connected.clear()
            await self._connected.wait()
        assert self._conn is not None
        while not self._renewal_answers.empty():  # answers to an earlier exchange
            self._renewal_answers.get_nowait()
        cert_pem = await renew_on(self._conn, self._renewal_answers, self.flash,
                                  self.device_id, answer_timeout_s=answer_timeout_s,
                                  attempts=attempts)
        self.ledger.renewals += 1
        self._reconnect = True
        self._wake.set()
        return cert_pem

    def _until_renewal(self) -> float:
        """Seconds from now to the renewal moment of the certificate on flash (0 if past)."""
        cert = x509.load_pem_x509_certificate(self.flash.cert_file.read_bytes())
        at = self.renewal_policy.renew_at(cert.not_valid_before_utc, cert.not_valid_after_utc)
        return max(0.0, (at - dt.datetime.now(dt.UTC)).total_seconds())

    async def _echo_last(self, conn: AsyncClient) -> None:
        """Publish the last acknowledged message again. A gap is seen only when a later
        number arrives, so messages a crashing broker lost at the end of what a device sent
        would stay unnoticed until it sends again; after a broker restart every device
        reconnects, and this echo shows the bridge the highest number it should have (a
        duplicate, and harmless, when nothing was lost)."""
        last = self._outbox.last_acked()
        if last is None or any((m.epoch, m.seq) == (last.epoch, last.seq)
                               for m in self._resend):
            return
        with contextlib.suppress(MqttError):
            if await self._publish(conn, last):
                self.ledger.echoed += 1

    async def _resend_one(self, conn: AsyncClient) -> None:
        message = self._resend[0]
        try:
            accepted = await self._publish(conn, message)
        except MqttError:
            return
        if not accepted:
            await asyncio.sleep(1.0)
            return
        self._resend.popleft()
        self.ledger.resent += 1

    async def _publish(self, conn: AsyncClient, message: Message) -> bool:
        """Publish one message; True when the broker accepted it. Raises MqttError when the
        connection failed (the caller keeps the message)."""
        props = telemetry_properties(message.seq, message.epoch)
        self.ledger.sent += 1
        code = await conn.publish(self.telemetry_topic, message.payload,
                                  qos=1, properties=props)
        if code.is_failure:
            self.ledger.refused += 1
            return False
        return True

    async def _send_one(self, conn: AsyncClient) -> None:
        message = self._outbox[0]
        if message.seq not in self.faults.lost_after_ack:
            try:
                accepted = await self._publish(conn, message)
            except MqttError:
                return  # still queued; the connection loop reconnects
            if not accepted:
                await asyncio.sleep(1.0)  # keep it, and do not spin on a broker that refuses
                return
            every = self.faults.duplicate_every
            if every and message.seq % every == 0:
                with contextlib.suppress(MqttError):
                    await self._publish(conn, message)  # the same message, once more
        self._outbox.acked(message.seq, message.epoch)
        self.ledger.acknowledged(message)


def telemetry_properties(seq: int, epoch: int) -> Properties:
    """The MQTT v5 properties of a telemetry message (asyncapi.yaml, ``numbering``)."""
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE_JSON
    props.UserProperty = [("seq", str(seq)), ("epoch", str(epoch))]
    return props


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


MAX_RESEND_RANGES = 100  # a request with more is not from our backend


def _resend_request(payload: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    """The epoch and inclusive ranges of a resend request, or None when it is not one."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    epoch = body.get("epoch", 0)
    if type(epoch) is not int or epoch < 0:
        return None
    spans = body.get("resend")
    if not isinstance(spans, list) or not 0 < len(spans) <= MAX_RESEND_RANGES:
        return None
    ranges = []
    for span in spans:
        if not (isinstance(span, list) and len(span) == 2
                and all(type(x) is int and x > 0 for x in span) and span[0] <= span[1]):
            return None
        ranges.append((span[0], span[1]))
    return epoch, ranges


def __getattr__(name: str) -> object:
    # The device models moved to firmware_sim.models (which imports this module); old
    # imports of Watch and Scale from here keep working.
    if name in ("Watch", "Scale"):
        from firmware_sim import models
        return getattr(models, name)
    raise AttributeError(name)
