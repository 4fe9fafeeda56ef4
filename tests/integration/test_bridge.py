"""The bridge against a real Mosquitto (mTLS) and a real PostgreSQL."""

import asyncio
import itertools
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from tests.conftest import new_bridge, new_patient, new_watch, wait_until
from vitals.senml import CONTENT_TYPE_CBOR, CONTENT_TYPE_JSON, encode_cbor, encode_json


async def _connected_device(watch, broker):
    context = tls_context(watch.broker.ca_file, watch.flash.cert_file, watch.flash.key_file)
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                     client_id=watch.device_id, protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(context)
    await client.connect(broker.host, broker.port)
    return client


def _props(seq):
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE_JSON
    props.UserProperty = ("seq", str(seq))
    return props


# Each pack covers seconds of its own, as a real device's messages do: the bridge keeps one
# sample per device, metric and time, so packs overlapping to the millisecond lose samples.
_ORIGIN = time.time() - 3600
_slots = itertools.count()


def _heart_rate(n=5, base=70.0):
    start = _ORIGIN + next(_slots) * 10
    return encode_json("x/", [("heart_rate", "/min", start + i, base + i) for i in range(n)])


async def _ledger(core, device_id):
    row = await core.pool.fetchrow(
        "SELECT count(*) AS messages, coalesce(sum(samples), 0) AS samples"
        " FROM ingested_messages WHERE device_id = $1", device_id)
    return row["messages"], row["samples"]


async def test_a_message_delivered_three_times_is_stored_once(core, pki, broker, bridge,
                                                              tmp_path):
    patient, _, _ = await new_patient(core, "p1")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _connected_device(watch, broker)
    topic = f"devices/{watch.device_id}/telemetry"
    payload = _heart_rate()
    for _ in range(3):
        code = await client.publish(topic, payload, properties=_props(7))
        assert not code.is_failure
    await client.publish(topic, _heart_rate(), properties=_props(8))  # the sync point

    async def both_seen():
        return (await _ledger(core, watch.device_id))[0] == 2
    await wait_until(both_seen)
    assert await _ledger(core, watch.device_id) == (2, 10)
    assert await core.pool.fetchval("SELECT sum(samples) FROM segments") == 10
    await client.disconnect()


async def test_malformed_and_unpaired_data_is_quarantined_with_its_reason(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "p2")
    paired = await new_watch(core, pki, broker, tmp_path, patient)
    unpaired = await new_watch(core, pki, broker, tmp_path, None)  # provisioned only
    good = await _connected_device(paired, broker)
    stray = await _connected_device(unpaired, broker)
    await good.publish(f"devices/{paired.device_id}/telemetry", b'{"not": senml',
                       properties=_props(1))
    await good.publish(f"devices/{paired.device_id}/telemetry", _heart_rate(),
                       properties=None)  # no sequence number
    await stray.publish(f"devices/{unpaired.device_id}/telemetry", _heart_rate(),
                        properties=_props(1))
    await good.publish(f"devices/{paired.device_id}/telemetry", _heart_rate(),
                       properties=_props(2))

    async def all_handled():
        return await core.pool.fetchval("SELECT count(*) FROM quarantine") == 3
    await wait_until(all_handled)
    reasons = {r["reason"]: r for r in await core.pool.fetch("SELECT * FROM quarantine")}
    assert set(reasons) == {"malformed", "missing_sequence", "device_provisioned"}
    assert reasons["malformed"]["sealed"] != b'{"not": senml'  # kept, but sealed
    # The consumer went on: the valid message after the bad ones is stored.
    await wait_until(lambda: _stored_messages(core, paired.device_id, 1))
    assert (await _ledger(core, unpaired.device_id))[0] == 0
    await good.disconnect()
    await stray.disconnect()


async def _stored_messages(core, device_id, n):
    return (await _ledger(core, device_id))[0] == n


class _NeverCommits:
    """A store whose transaction never finishes: the bridge must not ack."""

    def __init__(self):
        self.entered = asyncio.Event()

    async def ingest_batch(self, messages, quarantined=()):
        self.entered.set()
        await asyncio.Event().wait()


async def test_a_message_not_committed_is_not_acked_and_comes_back(core, pki, broker,
                                                                   tmp_path):
    patient, _, _ = await new_patient(core, "p3")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    context = tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key)
    client_id = "svc-bridge-ack-test"

    stuck_store = _NeverCommits()
    first = Bridge(bridge_client(client_id, context), stuck_store, core.registry,
                   BridgeConfig(batch_size=10))
    ready = asyncio.Event()
    task = asyncio.create_task(first.run(broker.host, broker.services_port, connect_properties(20),
                                         ready))
    await asyncio.wait_for(ready.wait(), 15)
    device = await _connected_device(watch, broker)
    await device.publish(f"devices/{watch.device_id}/telemetry", _heart_rate(),
                         properties=_props(1))
    await asyncio.wait_for(stuck_store.entered.wait(), 15)
    task.cancel()  # the bridge dies mid-batch, before any commit
    await asyncio.gather(task, return_exceptions=True)
    await first.close()
    assert (await _ledger(core, watch.device_id))[0] == 0

    # Same client id, persistent session: the broker redelivers the unacked message.
    second = Bridge(bridge_client(client_id, context), core.store, core.registry,
                    BridgeConfig(batch_size=10))
    ready = asyncio.Event()
    task = asyncio.create_task(second.run(broker.host, broker.services_port, connect_properties(20),
                                          ready))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        await wait_until(lambda: _stored_messages(core, watch.device_id, 1))
        assert (await _ledger(core, watch.device_id)) == (1, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await second.close(end_session=True)
        await device.disconnect()


class _Gated:
    """The real store, with the first transaction held until ``gate`` opens; it records
    the order of the batches and how many were ever in a transaction at once."""

    def __init__(self, store):
        self.store, self.gate, self.entered = store, asyncio.Event(), asyncio.Event()
        self.batches, self.in_flight, self.most_in_flight = [], 0, 0

    async def ingest_batch(self, messages, quarantined=()):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.batches.append([m.seq for m in messages])
        try:
            self.entered.set()
            await self.gate.wait()
            return await self.store.ingest_batch(messages, quarantined)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("ending", ["commit", "crash"])
async def test_the_next_batch_is_prepared_while_one_is_stored_and_waits_its_turn(
        core, pki, broker, tmp_path, ending):
    patient, _, _ = await new_patient(core, f"overlap-{ending}")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    context = tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key)
    client_id = f"svc-bridge-overlap-{ending}"
    store = _Gated(core.store)
    bridge = Bridge(bridge_client(client_id, context), store, core.registry,
                    BridgeConfig(batch_size=1, batch_wait_s=0.0))
    ready = asyncio.Event()
    task = asyncio.create_task(bridge.run(broker.host, broker.services_port,
                                          connect_properties(20), ready))
    await asyncio.wait_for(ready.wait(), 15)
    device = await _connected_device(watch, broker)
    try:
        for seq in (1, 2):
            await device.publish(f"devices/{watch.device_id}/telemetry", _heart_rate(),
                                 properties=_props(seq))
        await asyncio.wait_for(store.entered.wait(), 15)
        # The second message is taken and prepared while the first is in its transaction,
        # and waits: nothing is stored, nothing acked.
        await wait_until(lambda: _true(bridge.backlog == 0))
        await asyncio.sleep(0.3)
        assert store.batches == [[1]]
        assert (await _ledger(core, watch.device_id))[0] == 0
        if ending == "commit":
            store.gate.set()
            await wait_until(lambda: _stored_messages(core, watch.device_id, 2))
            assert store.batches == [[1], [2]] and store.most_in_flight == 1
            return
        task.cancel()  # dies with one batch in its transaction and the next prepared
        await asyncio.gather(task, return_exceptions=True)
        await bridge.close()
        # Neither was acked: the persistent session gives both to the next bridge.
        bridge = Bridge(bridge_client(client_id, context), core.store, core.registry,
                        BridgeConfig(batch_size=10))
        task = asyncio.create_task(bridge.run(broker.host, broker.services_port,
                                              connect_properties(20)))
        await wait_until(lambda: _stored_messages(core, watch.device_id, 2))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bridge.close(end_session=True)
        await device.disconnect()


async def _true(value):
    return value


@pytest.mark.parametrize("seconds_off", [-40 * 86400, 3600])
async def test_samples_outside_the_time_window_are_rejected_not_stored(
        core, pki, broker, bridge, tmp_path, seconds_off):
    patient, _, _ = await new_patient(core, f"p4{abs(seconds_off)}")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    device = await _connected_device(watch, broker)
    t = time.time() + seconds_off
    payload = encode_json("x/", [("heart_rate", "/min", t, 60.0), ("heart_rate", "/min",
                                                                    time.time(), 61.0)])
    await device.publish(f"devices/{watch.device_id}/telemetry", payload,
                         properties=_props(1))
    await wait_until(lambda: _stored_messages(core, watch.device_id, 1))
    row = await core.pool.fetchrow("SELECT samples, rejected FROM ingested_messages")
    assert (row["samples"], row["rejected"]) == (1, 1)
    reason = await core.pool.fetchval("SELECT detail FROM quarantine")
    assert "outside_time_window" in reason
    await device.disconnect()


async def test_a_cbor_pack_is_stored_like_json_and_an_unknown_content_type_quarantined(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "p-cbor")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    device = await _connected_device(watch, broker)
    now = time.time()
    cbor = encode_cbor("x/", [("heart_rate", "/min", now - 3 + i, 70.0 + i) for i in range(3)])
    props = _props(1)
    props.ContentType = CONTENT_TYPE_CBOR
    await device.publish(f"devices/{watch.device_id}/telemetry", cbor, properties=props)
    odd = _props(2)
    odd.ContentType = "application/xml"
    await device.publish(f"devices/{watch.device_id}/telemetry", b"<hr>70</hr>",
                         properties=odd)
    await wait_until(lambda: _stored_messages(core, watch.device_id, 1))
    assert await _ledger(core, watch.device_id) == (1, 3)

    async def quarantined():
        return await core.pool.fetchval("SELECT count(*) FROM quarantine") == 1
    await wait_until(quarantined)
    row = await core.pool.fetchrow("SELECT reason, detail FROM quarantine")
    assert (row["reason"], row["detail"]) == ("unsupported_content_type", "application/xml")
    await device.disconnect()


async def test_two_bridge_workers_share_the_subscription_without_duplicates(
        core, pki, broker, tmp_path):
    """Two workers on one shared subscription: every message stored once, both worked."""
    patient, _, _ = await new_patient(core, "p-shared")
    watches = [await new_watch(core, pki, broker, tmp_path, patient) for _ in range(4)]
    workers, tasks = [], []
    for _ in range(2):
        worker = new_bridge(core, client_id=f"svc-bridge-shared-{len(workers)}-{time.time_ns()}",
                            ca_file=pki.ca.ca_file, cert=pki.bridge_cert, key=pki.bridge_key,
                            batch_size=20)
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(worker.run(broker.host, broker.services_port,
                                                    connect_properties(200), ready)))
        await asyncio.wait_for(ready.wait(), 15)
        workers.append(worker)
    devices = [await _connected_device(w, broker) for w in watches]
    per_device = 50
    try:
        for seq in range(1, per_device + 1):
            for watch, device in zip(watches, devices, strict=True):
                await device.publish(f"devices/{watch.device_id}/telemetry",
                                     _heart_rate(n=3), properties=_props(seq))

        async def all_stored():
            return await core.pool.fetchval(
                "SELECT count(*) FROM ingested_messages") == per_device * len(watches)
        await wait_until(all_stored, timeout=30)
        assert await core.pool.fetchval("SELECT sum(samples) FROM segments") == (
            3 * per_device * len(watches))
        assert [w.stats.duplicates for w in workers] == [0, 0]
        assert all(w.stats.messages > 0 for w in workers), [w.stats.messages for w in workers]
        assert sum(w.stats.messages for w in workers) == per_device * len(watches)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in workers:
            await worker.close(end_session=True)
        for device in devices:
            await device.disconnect()
