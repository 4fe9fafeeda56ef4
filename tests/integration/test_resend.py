"""Nothing a device measured is lost: its durable outbox across a restart, and the resend
protocol when the backend finds a gap. Real Mosquitto (mTLS) and real PostgreSQL."""

import asyncio
import datetime
import json
import time

import paho.mqtt.client as mqtt
import pytest

from aiopaho import AsyncClient, MqttError
from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, make_client, tls_context
from broker_bridge.gaps import (
    GapConfig,
    GapTracker,
    PgLedger,
    Resender,
    Stream,
    resend_request,
)
from firmware_sim.device import Broker, Watch
from healthiot.localservers import free_port
from storage.store import MessageIn
from tests.conftest import new_patient, new_watch, wait_until


async def _stored_seqs(core, device_id):
    rows = await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq", device_id)
    return [r["seq"] for r in rows]


def _measure(watch, n):
    now = time.time()
    for i in range(n):
        watch.measure(now - 5 * (n - i) - 5, now - 5 * (n - i))  # 5 s of 1 Hz each


async def test_messages_queued_while_offline_survive_a_restart_and_are_stored_once(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "offline")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    nowhere = Broker("localhost", free_port(), pki.ca.ca_file)  # nothing listens there
    offline = Watch(watch.device_id, watch.flash, nowhere, interval_s=1.0)
    watch.close()
    _measure(offline, 6)
    sender = asyncio.create_task(offline._deliver_forever())
    await asyncio.sleep(1.5)  # a few refused connections, with backoff
    assert not offline.online and offline.ledger.messages == 0 and offline.pending == 6
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    offline.close()  # the simulator stops; only the flash directory remains

    restarted = Watch(watch.device_id, watch.flash, watch.broker, interval_s=1.0)
    assert restarted.pending == 6 and restarted.next_seq == 7
    now = time.time()  # later seconds than the six before: nothing in them is a copy
    restarted.measure(now - 4, now)  # and it goes on numbering after the old messages
    await restarted.flush(timeout=20)
    assert restarted.pending == 0 and restarted.ledger.messages == 7

    async def all_stored():
        return len(await _stored_seqs(core, watch.device_id)) == 7
    await wait_until(all_stored)
    assert await _stored_seqs(core, watch.device_id) == [1, 2, 3, 4, 5, 6, 7]
    samples = await core.pool.fetchval(
        "SELECT sum(samples) FROM ingested_messages WHERE device_id = $1", watch.device_id)
    assert samples == restarted.ledger.samples
    restarted.close()


async def test_a_restart_after_delivery_sends_nothing_twice(core, pki, broker, bridge,
                                                            tmp_path):
    patient, _, _ = await new_patient(core, "twice")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    _measure(watch, 3)
    await watch.flush(timeout=20)
    watch.close()
    again = Watch(watch.device_id, watch.flash, watch.broker, interval_s=1.0)
    assert again.pending == 0
    await again.flush(timeout=5)
    assert again.ledger.sent == 0
    _measure(again, 1)
    await again.flush(timeout=20)

    async def four():
        return len(await _stored_seqs(core, watch.device_id)) == 4
    await wait_until(four)
    assert await _stored_seqs(core, watch.device_id) == [1, 2, 3, 4]
    again.close()


def _gap_bridge(core, pki, config):
    """A bridge whose gap checks run on a short grace period, so the test is quick."""
    client = bridge_client(f"svc-bridge-gaps-{time.monotonic_ns()}",
                           tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key))
    return Bridge(client, core.store, core.registry, BridgeConfig(batch_size=50),
                  resender=Resender(GapTracker(config), PgLedger(core.pool)))


@pytest.fixture
async def gap_bridge(core, pki, broker):
    running = _gap_bridge(core, pki, GapConfig(grace_s=1.0, retry_s=2.0, check_every_s=0.2))
    ready = asyncio.Event()
    task = asyncio.create_task(running.run(broker.host, broker.services_port,
                                           connect_properties(100), ready),
                               name="gap-bridge")
    await asyncio.wait_for(ready.wait(), 15)
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await running.close(end_session=True)


async def test_a_message_the_broker_acked_and_lost_is_asked_for_and_resent(
        core, pki, broker, gap_bridge, tmp_path):
    patient, _, _ = await new_patient(core, "lossy")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    # Numbers 3 and 4 are "acknowledged then lost by the broker": the device counts them as
    # delivered and keeps them in its replay window; the backend never sees them.
    watch.faults.lost_after_ack.update({3, 4})
    watch.interval_s = 0.3
    stop = asyncio.Event()
    running = asyncio.create_task(watch.run(stop))

    async def asked_and_resent():
        return watch.ledger.resent >= 2
    await wait_until(asked_and_resent, timeout=30)
    stop.set()
    await running
    await watch.flush(timeout=20)
    last = watch.next_seq - 1
    assert watch.pending == 0 and watch.ledger.messages == last >= 5

    async def complete():
        return len(await _stored_seqs(core, watch.device_id)) == last
    await wait_until(complete, timeout=20)
    assert await _stored_seqs(core, watch.device_id) == list(range(1, last + 1))
    samples = await core.pool.fetchval(
        "SELECT sum(samples) FROM ingested_messages WHERE device_id = $1", watch.device_id)
    assert samples == watch.ledger.samples  # the ledger counted 3 and 4 once: no double
    assert gap_bridge.resender.tracker.stats.requests >= 1
    assert gap_bridge.resender.tracker.missing(Stream(watch.device_id)) == []
    watch.close()


async def test_a_device_asked_for_a_message_outside_its_window_sends_nothing(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "window")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    _measure(watch, 2)
    await watch.flush(timeout=20)
    assert watch.on_request(b'{"resend": [[1, 1], [7, 9]]}') == 1  # 1 kept, 7-9 never made
    assert watch.on_request(b'{"resend": [[1, 1]]}') == 0  # already queued: not twice
    for junk in (b"", b"[]", b'{"resend": [[2, 1]]}', b'{"resend": [[0, 3]]}',
                 b'{"resend": [["1", 2]]}', b'{"resend": [[1, 2, 3]]}', b"\xff"):
        assert watch.on_request(junk) == 0, junk
    await watch.flush(timeout=20)
    assert watch.ledger.resent == 1 and watch.ledger.messages == 2

    async def seen_twice():  # the repeat reached the bridge and changed nothing
        return bridge.stats.duplicates >= 1
    await wait_until(seen_twice)
    assert await _stored_seqs(core, watch.device_id) == [1, 2]
    watch.close()


class _Inbox:
    """Records what would be published (the database side is real)."""

    def __init__(self):
        self.published = []

    async def publish(self, topic, payload, *, qos, timeout, properties=None):
        self.published.append((topic, json.loads(payload), qos))


async def test_a_gap_another_worker_filled_is_not_asked_for(core):
    clock = [100.0]
    resender = Resender(GapTracker(GapConfig(grace_s=5, check_every_s=0)),
                        PgLedger(core.pool), clock=lambda: clock[0])
    received = datetime.datetime.now(datetime.UTC)
    # What the other worker of the shared subscription stored: 2, 4 and 5, and 1 earlier.
    await core.store.ingest([MessageIn("dev-x", seq, received, [], 0) for seq in (1, 2, 4, 5)])
    resender.seen([("dev-x", 0, 3), ("dev-x", 0, 6), ("dev-x", 0, 9)])  # what this worker stored
    inbox = _Inbox()
    assert await resender.check(inbox) == 0  # seeded: up to 2 stored before; nothing due yet
    assert resender.tracker.missing(Stream("dev-x")) == [(4, 5), (7, 8)]
    clock[0] += 5
    assert await resender.check(inbox) == 1
    assert inbox.published == [("devices/dev-x/inbox", {"resend": [[7, 8]]}, 1)]


async def _client(device, broker, client_id=None):
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                     client_id=client_id or device.device_id,
                                     protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(tls_context(device.broker.ca_file, device.flash.cert_file,
                                            device.flash.key_file))
    await client.connect(broker.host, broker.port)
    return client


async def _received_within(client, seconds):
    try:
        return await asyncio.wait_for(client.messages.get(), seconds)
    except TimeoutError:
        return None


async def test_only_the_bridge_writes_an_inbox_and_only_its_device_reads_it(core, pki, broker,
                                                                           tmp_path):
    alice = await new_watch(core, pki, broker, tmp_path, None)
    mallory = await new_watch(core, pki, broker, tmp_path, None)
    owner = await _client(alice, broker)
    await owner.subscribe(alice.inbox_topic)
    snoop = await _client(mallory, broker)
    try:
        await snoop.subscribe(alice.inbox_topic)  # refused (SUBACK 0x87), or never delivered
    except MqttError:
        pass
    # A device cannot ask another one to replay (a cheap way to make it flood the broker).
    await snoop.publish(alice.inbox_topic, resend_request([(1, 1000)]))
    assert await _received_within(owner, 1.5) is None

    bridge = AsyncClient(make_client(f"svc-bridge-inbox-{time.monotonic_ns()}", tls_context(
        pki.ca.ca_file, pki.bridge_cert, pki.bridge_key)))
    await bridge.connect(broker.host, broker.services_port)
    code = await bridge.publish(alice.inbox_topic, resend_request([(3, 4)]), qos=1)
    assert not code.is_failure
    got = await _received_within(owner, 5)
    assert got is not None and json.loads(got.payload) == {"resend": [[3, 4]]}
    assert await _received_within(snoop, 1.0) is None
    for client in (owner, snoop, bridge):
        await client.disconnect()
    alice.close()
    mallory.close()
