"""Ingestion, measured side by side in one run on a stack of its own (PostgreSQL, Mosquitto
with mTLS, QoS 1, SenML JSON of heart-rate samples), at 1, 10, 60 and 600 samples a message:

(a) the ceiling: a bare paho subscriber that only acks, draining a backlog of messages
    queued for it by the broker;
(a') the bridge's own receive path (LeanClient) draining the same way, acking batches of
    500 and doing nothing else: what is left to the pipeline;
(b) the full pipeline with one worker (the bridge: decode, normalise, seal, COPY, commit,
    then ack), draining the same number of messages queued the same way;
(c) at 60 samples a message only: publish-to-commit latency with devices publishing at half
    of (b)'s rate;
(d) ``healthiot bridge --workers N`` (N: the cores), real processes on the shared
    subscription, draining the same number of messages queued for their sessions; timed
    from the first commit to the last, as seen from the database (start-up left out).

The bridge is the production one (healthiot.services.new_bridge): the gap tracker and resend
requests (broker_bridge/gaps.py) and refusal notices run as ``healthiot bridge`` runs them.
``lost`` and ``dup`` are counted in samples: what was stored is decrypted and compared,
sample by sample, with what was sent (``lost``: sent and not stored; ``dup``: stored beyond
the copies sent).

Ports come from the environment as for every healthiot command (``HEALTHIOT_PG_PORT``,
``HEALTHIOT_MQTT_PORT``, ``HEALTHIOT_MQTT_SERVICES_PORT``); a free one where it sets none.

Draining a queued backlog measures the consumer alone; the publishers ran before. The ratio
(b)/(a) is what to compare across machines. Last line, for 60 samples a message and one
worker: ``bench: samples_per_s=<n> msgs_per_s=<n> ratio=<r> p99_ms=<n> lost=<n> dup=<n>``.
Run with `make bench`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing as mp
import os
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from api import totp
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from devices.broker_config import SHARED_TELEMETRY
from devices.ca import key_pem, make_csr, new_key, write_private
from devices.identity import new_device_id
from healthiot import stack
from healthiot.gcfreeze import freeze_startup
from healthiot.localservers import free_port
from healthiot.services import Core, new_bridge, open_core
from healthiot.settings import Settings, load
from healthiot.workers import default_workers, worker_client_id
from storage.store import Ingested, MessageIn
from vitals.senml import CONTENT_TYPE_JSON, encode_json

DEVICES = 20
SIZES = (1, 10, 60, 600)  # samples a message: a spot reading up to ten minutes at 1 Hz
HEADLINE = 60  # a minute of 1 Hz heart rate: the size of the last line and of (c)
MAX_BACKLOG = 20_000  # messages per drained phase...
PHASE_SAMPLES = 1_200_000  # ...and at most this many samples
LATENCY_S = 15  # length of the paced phase
BATCH = 500


def backlog(size: int) -> int:
    """Messages drained per phase at ``size`` samples a message."""
    return min(MAX_BACKLOG, PHASE_SAMPLES // size) // DEVICES * DEVICES


# --- devices, in a process of their own ------------------------------------------------


def _samples(seq: int, origin: float, size: int) -> list[tuple[float, float]]:
    # Each message covers its own seconds, as a real device's do (the bridge keeps one sample
    # per device, metric and time): ``size`` seconds from ``origin + seq * size``.
    start = origin + seq * size
    return [(start + i, 60.0 + (seq + i) % 40) for i in range(size)]


def _payload(device_id: str, seq: int, origin: float, size: int) -> bytes:
    return encode_json(f"{device_id}/", [("heart_rate", "/min", t, v)
                                         for t, v in _samples(seq, origin, size)])


def _publish(devices: list[tuple[str, str, str]], ca_file: str, port: int, first_seq: int,
             per_device: int, rate: float | None, origin: float, size: int,
             out: mp.Queue[list[tuple[str, int, float]]]) -> None:
    """Publish seq first_seq.. for every device, round robin, all at once or at ``rate``
    messages per second; report [(device, seq, publish time)] once all are PUBACKed."""
    clients = []
    for device_id, cert, key in devices:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                             protocol=mqtt.MQTTv5)
        client.tls_set_context(tls_context(Path(ca_file), Path(cert), Path(key)))
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(0)
        client.connect("localhost", port)
        client.loop_start()
        clients.append(client)
    # Payloads are made before the clock starts: the devices' own CPU is not the subject.
    payloads = [[_payload(device_id, first_seq + k, origin, size) for device_id, _, _ in devices]
                for k in range(per_device)]
    sent: list[tuple[str, int, float]] = []
    infos = []
    begin = time.time()
    n = 0
    for k in range(per_device):
        seq = first_seq + k
        for (device_id, _, _), client, payload in zip(devices, clients, payloads[k],
                                                      strict=True):
            if rate is not None:
                delay = begin + n / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = CONTENT_TYPE_JSON
            props.UserProperty = ("seq", str(seq))
            infos.append(client.publish(f"devices/{device_id}/telemetry", payload, qos=1,
                                        properties=props))
            sent.append((device_id, seq, time.time()))
            n += 1
    for info in infos:
        info.wait_for_publish(60)
    for client in clients:
        client.disconnect()
        client.loop_stop()
    out.put(sent)


Publishing = tuple[BaseProcess, "mp.Queue[list[tuple[str, int, float]]]"]


def publish(devices: list[tuple[str, str, str]], ca_file: Path, port: int, first_seq: int,
            per_device: int, size: int, rate: float | None = None) -> Publishing:
    spawn = mp.get_context("spawn")
    out: mp.Queue[list[tuple[str, int, float]]] = spawn.Queue()
    process = spawn.Process(
        target=_publish, args=(devices, str(ca_file), port, first_seq, per_device, rate,
                               ORIGIN, size, out))
    process.start()
    return process, out


def published(publishing: Publishing) -> list[tuple[str, int, float]]:
    process, out = publishing
    sent = out.get(timeout=600)
    process.join(30)
    return sent


# --- consumers ----------------------------------------------------------------------------


def _session(client_id: str, context: object, port: int, *, manual_ack: bool,
             on_message: object = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    client.tls_set_context(context)  # type: ignore[arg-type]
    if on_message is not None:
        client.on_message = on_message  # type: ignore[assignment]
    client.connect("localhost", port, clean_start=False,
                   properties=connect_properties(2 * BATCH))
    return client


def open_session(client_id: str, context: object, port: int) -> None:
    """Subscribe once and leave: the broker queues telemetry for the session from now on."""
    client = _session(client_id, context, port, manual_ack=False)
    client.loop_start()
    client.subscribe(SHARED_TELEMETRY, qos=1)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


def close_session(client_id: str, context: object, port: int) -> None:
    """Remove a session the broker keeps (a worker stopped without ending it), or it goes on
    taking its share of the shared subscription's messages with nobody reading them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set_context(context)  # type: ignore[arg-type]
    client.connect("localhost", port, clean_start=True)
    client.loop_start()
    time.sleep(0.2)
    client.disconnect(properties=_end_session())
    client.loop_stop()


def drain_bare(client_id: str, context: object, port: int, expected: int) -> float:
    """(a) A no-op subscriber: paho's own loop, auto-ack; seconds from first to last."""
    received = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        received += 1
        last = time.perf_counter()
        if received == 1:
            first = last
        if received >= expected:
            done.set()

    client = _session(client_id, context, port, manual_ack=False, on_message=on_message)
    client.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"the bare subscriber got {received} of {expected}")
    client.disconnect(properties=_end_session())
    client.loop_stop()
    return last - first


async def drain_lean(client_id: str, context: ssl.SSLContext, port: int, expected: int
                     ) -> float:
    """(a') The bridge's client, acking batches and doing nothing else; seconds from the
    first message to the last."""
    client = bridge_client(client_id, context, queue_size=4 * BATCH)
    await client.connect("localhost", port, clean_start=False,
                         properties=connect_properties(2 * BATCH))
    await client.subscribe(SHARED_TELEMETRY, qos=1)
    received, first = 0, 0.0
    while received < expected:
        batch = [await asyncio.wait_for(client.messages.get(), 60)]
        first = first or time.perf_counter()
        while len(batch) < BATCH and not client.messages.empty():
            batch.append(client.messages.get_nowait())
        client.ack_many(batch)
        received += len(batch)
    seconds = time.perf_counter() - first
    await client.disconnect(properties=_end_session())
    return seconds


def _end_session() -> Properties:
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    return props


class CommitClock:
    """Wraps the store: the wall time at which each (device, seq) was committed."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.committed: dict[tuple[str, int], float] = {}
        self._progress = asyncio.Event()

    async def reach(self, count: int, timeout: float) -> None:
        """Return once ``count`` messages are committed, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.committed) < count and time.monotonic() < deadline:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), deadline - time.monotonic())
            except TimeoutError:
                break

    async def ingest_batch(self, messages: list[MessageIn], quarantined: object = ()
                           ) -> Ingested:
        done: Ingested = await self.store.ingest_batch(  # type: ignore[attr-defined]
            messages, quarantined)
        now = time.time()
        for m in messages:
            self.committed.setdefault((m.device_id, m.seq), now)
        self._progress.set()
        return done


# Midnight UTC ten days ago: the minute of every message, up to 14,400 per device, inside
# the acceptance window (30 days back, none ahead).
ORIGIN = float((time.time() // 86_400 - 10) * 86_400)
_PORTS = ("HEALTHIOT_PG_PORT", "HEALTHIOT_MQTT_PORT", "HEALTHIOT_MQTT_SERVICES_PORT")


async def workers_drain(env: dict[str, str], workers: int, core: Core, expected: int
                        ) -> float:
    """(d) Messages per second of ``expected`` new messages committed by a
    ``healthiot bridge --workers`` process started now, from the first poll that sees a
    commit to the one that sees them all; the process is stopped after."""
    async def count() -> int:
        return int(await core.pool.fetchval("SELECT count(*) FROM ingested_messages"))

    before = await count()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "healthiot.cli", "bridge", "--workers", str(workers),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        first = 0.0
        seen_first = n = before
        deadline = time.monotonic() + 180
        while n < before + expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers stored {n - before} of {expected}")
            await asyncio.sleep(0.02)
            n = await count()
            if n > before and not first:
                first, seen_first = time.perf_counter(), n
        # Those the first poll saw were committed before it: the rate is of the others.
        return (before + expected - seen_first) / (time.perf_counter() - first)
    finally:
        process.terminate()
        await process.wait()


def bench_environ(workdir: Path, environ: dict[str, str]) -> dict[str, str]:
    """The settings' environment: ``environ``'s own, a stack in ``workdir``, and a free port
    for each port ``environ`` does not set (the defaults may be a running stack's)."""
    ports = {name: str(free_port()) for name in _PORTS if name not in environ}
    return {**environ, **ports, "HEALTHIOT_VAR_DIR": str(workdir)}


async def stored_vs_sent(core: Core, patient: uuid.UUID, sent: list[tuple[str, int, float]],
                         size: int) -> tuple[int, int]:
    """(lost, dup) in samples: the stored segments decrypted, each sample (device, time,
    value) matched with the copies sent."""
    expected: Counter[tuple[str, int, float]] = Counter()
    for device_id, seq, _ in sent:
        expected.update((device_id, round(t * 1000), v) for t, v in _samples(seq, ORIGIN, size))
    start = dt.datetime.fromtimestamp(ORIGIN, dt.UTC)
    # Every segment as stored, one by one: read_series and read_by_source give each time
    # once per source, which would hide a sample stored twice.
    parts = await core.store.read_segments(
        patient, "heart_rate", start, dt.datetime.now(dt.UTC))
    stored: Counter[tuple[str, int, float]] = Counter()
    for device_id, samples in parts:
        stored.update(zip([device_id] * len(samples), samples.t_ms.tolist(),
                          samples.value.tolist(), strict=True))
    return sum((expected - stored).values()), sum((stored - expected).values())


@dataclass
class Sweep:
    """One size's figures, in messages a second."""

    size: int
    bare: float = 0.0
    lean: float = 0.0
    pipeline: float = 0.0
    workers: float = 0.0
    lost: int = 0
    dup: int = 0
    resend_requests: int = 0
    latencies_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))


class Bench:
    """The stack, its materials and the worker processes' environment, for every phase."""

    def __init__(self, workdir: Path, settings: Settings, materials: stack.Materials,
                 core: Core, dsn: str) -> None:
        self.workdir, self.settings, self.materials, self.core = workdir, settings, materials, core
        self.context = tls_context(materials.ca.ca_file, materials.bridge_cert,
                                   materials.bridge_key)
        self.port, self.services = settings.mqtt_port, settings.mqtt_services_port
        self.workers = default_workers()
        self.env = {**bench_environ(workdir, dict(os.environ)),
                    "HEALTHIOT_DATABASE_URL": dsn,
                    "HEALTHIOT_DATABASE_PASSWORD": materials.db_password,
                    "HEALTHIOT_KEK_FILE": str(materials.kek),
                    "HEALTHIOT_OWNER_KEYS_DIR": str(materials.kek.parent / "owner-keys"),
                    "HEALTHIOT_MQTT_HOST": "localhost",
                    "HEALTHIOT_MQTT_PORT": str(self.port),
                    "HEALTHIOT_MQTT_SERVICES_PORT": str(self.services),
                    "HEALTHIOT_PG_PORT": str(settings.pg_port),
                    "HEALTHIOT_MQTT_CA_FILE": str(materials.ca.ca_file),
                    "HEALTHIOT_MQTT_CERT_FILE": str(materials.bridge_cert),
                    "HEALTHIOT_MQTT_KEY_FILE": str(materials.bridge_key),
                    "HEALTHIOT_BRIDGE_BATCH_SIZE": str(BATCH),
                    "HEALTHIOT_BRIDGE_HEALTH_PORT": "0"}

    async def devices(self, patient: uuid.UUID) -> list[tuple[str, str, str]]:
        devices = []
        for _ in range(DEVICES):
            device_id, key = new_device_id("watch"), new_key()
            cert = self.materials.ca.issue_client(make_csr(key, device_id))
            key_file = self.workdir / f"{device_id}.key"
            cert_file = self.workdir / f"{device_id}.pem"
            write_private(key_file, key_pem(key))
            cert_file.write_bytes(cert)
            await self.core.registry.register(device_id, model="watch", serial=device_id,
                                              cert_pem=cert, patient_id=patient)
            devices.append((device_id, str(cert_file), str(key_file)))
        return devices

    def queue(self, devices: list[tuple[str, str, str]], first_seq: int, per_device: int,
              size: int, rate: float | None = None) -> list[tuple[str, int, float]]:
        """Publish and wait for every PUBACK (in the caller's thread)."""
        return published(publish(devices, self.materials.ca.ca_file, self.port, first_seq,
                                 per_device, size, rate))

    async def sweep(self, size: int) -> Sweep:
        result = Sweep(size)
        core, count = self.core, backlog(size)
        per_device = count // DEVICES
        patient = (await core.patients.create(f"bench-{size}", "x", totp.new_secret())).id
        devices = await self.devices(patient)

        # (a) the ceiling
        bare_id = f"svc-bench-bare-{size}"
        open_session(bare_id, self.context, self.services)
        await asyncio.to_thread(self.queue, devices, 1, per_device, size)
        result.bare = count / await asyncio.to_thread(drain_bare, bare_id, self.context,
                                                      self.services, count)

        # (a') the receive path alone
        lean_id = f"svc-bench-lean-{size}"
        open_session(lean_id, self.context, self.services)
        await asyncio.to_thread(self.queue, devices, 1, per_device, size)
        result.lean = count / await drain_lean(lean_id, self.context, self.services, count)

        # (b) the pipeline, on a backlog queued the same way
        bridge_id = f"svc-bench-bridge-{size}"
        open_session(bridge_id, self.context, self.services)
        sent = await asyncio.to_thread(self.queue, devices, 1, per_device, size)
        clock = CommitClock(core.store)
        bridge = new_bridge(core, client_id=bridge_id, ca_file=self.materials.ca.ca_file,
                            cert=self.materials.bridge_cert, key=self.materials.bridge_key,
                            batch_size=BATCH, store=clock)  # type: ignore[arg-type]
        freeze_startup()  # as healthiot bridge does before its worker starts
        began = time.perf_counter()
        task = asyncio.create_task(bridge.run("localhost", self.services,
                                              connect_properties(2 * BATCH)))
        await clock.reach(count, timeout=600)
        result.pipeline = count / (time.perf_counter() - began)
        next_seq = per_device + 1

        if size == HEADLINE:  # (c) latency at half the pipeline's rate, devices live
            paced = max(1, int(result.pipeline / 2 * LATENCY_S / DEVICES))
            # In a thread: the bridge shares this event loop and must keep running.
            live = await asyncio.to_thread(self.queue, devices, next_seq, paced, size,
                                           result.pipeline / 2)
            sent += live
            next_seq += paced
            await clock.reach(len(sent), timeout=120)
            result.latencies_ms = np.array([clock.committed[(d, s)] - t for d, s, t in live
                                            if (d, s) in clock.committed]) * 1000
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bridge.close(end_session=True)
        result.resend_requests = bridge.resender.tracker.stats.requests if bridge.resender else 0

        # (d) N worker processes, on a backlog queued for their sessions the same way
        base = f"svc-bench-workers-{size}"
        for index in range(self.workers):
            open_session(worker_client_id(base, index), self.context, self.services)
        sent += await asyncio.to_thread(self.queue, devices, next_seq, per_device, size)
        result.workers = await workers_drain({**self.env, "HEALTHIOT_BRIDGE_CLIENT_ID": base},
                                             self.workers, core, count)
        for index in range(self.workers):
            close_session(worker_client_id(base, index), self.context, self.services)
        result.lost, result.dup = await stored_vs_sent(core, patient, sent, size)
        return result


async def main(workdir: Path) -> str:
    settings = load(bench_environ(workdir, dict(os.environ)))
    materials = stack.prepare(settings)
    pg = stack.postgres_server(settings, materials)
    broker = stack.mosquitto_server(settings, materials)
    await pg.start()
    await broker.start()
    try:
        dsn = pg.dsn.rsplit("/", 1)[0] + "/healthiot"
        await stack.ensure_database(pg.dsn, materials.db_password, "healthiot")
        await stack.migrate_database(dsn, materials.db_password)
        core = await open_core(dsn, materials.db_password, materials.kek, create_kek=True)
        bench = Bench(workdir, settings, materials, core, dsn)
        results = [await bench.sweep(size) for size in SIZES]
        await core.pool.close()
    finally:
        broker.stop()
        pg.stop()

    n = bench.workers
    lean_heading = "(a') lean msg/s"
    print(f"{'samples/msg':>11} {'(a) bare msg/s':>14} {lean_heading:>15} "
          f"{'(b) 1 worker msg/s':>18} "
          f"{'samples/s':>10} {'ratio':>5} {f'(d) {n} workers msg/s':>20} {'samples/s':>10} "
          f"{'lost':>4} {'dup':>3}", file=sys.stderr)
    for r in results:
        print(f"{r.size:>11} {r.bare:>14,.0f} {r.lean:>15,.0f} {r.pipeline:>18,.0f} "
              f"{r.pipeline * r.size:>10,.0f} "
              f"{r.pipeline / r.bare:>5.2f} {r.workers:>20,.0f} {r.workers * r.size:>10,.0f} "
              f"{r.lost:>4} {r.dup:>3}", file=sys.stderr)
    head = next(r for r in results if r.size == HEADLINE)
    lat = head.latencies_ms
    p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("nan"),) * 2
    print(f"(c) {HEADLINE} samples a message at {head.pipeline / 2:,.0f} msg/s: publish-to-commit "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat):,} messages", file=sys.stderr)
    print(f"gap tracker: {sum(r.resend_requests for r in results)} resend requests; lost and "
          f"dup counted in samples, decrypted", file=sys.stderr)
    return (f"bench: samples_per_s={head.pipeline * HEADLINE:.0f} msgs_per_s={head.pipeline:.0f} "
            f"ratio={head.pipeline / head.bare:.2f} p99_ms={p99:.0f} "
            f"lost={sum(r.lost for r in results)} dup={sum(r.dup for r in results)}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="healthiot-bench-ingest-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres and mosquitto users must traverse it as root
        print(asyncio.run(main(Path(tmp))))
