"""A sequence number a device uses twice, and the epoch that lets a reset device number from 1
again (issue 17). Real MQTT v5 clients with ``seq``/``epoch`` user properties, the real
broker (mTLS), the real bridge and PostgreSQL."""

import asyncio
import datetime as dt
import hashlib
import itertools
import json
import logging
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from broker_bridge.gaps import GapConfig, GapTracker, PgLedger, Resender
from broker_bridge.metrics import render
from storage import ledger
from storage.store import MessageIn, QuarantineIn
from tests.conftest import new_patient, new_watch, wait_until
from tests.integration.test_device_cli import healthiot
from vitals.senml import CONTENT_TYPE_CBOR, CONTENT_TYPE_JSON, encode_json

_ORIGIN = time.time() - 3600
_slots = itertools.count()


def _heart_rate(base=70.0, n=5):
    start = _ORIGIN + next(_slots) * 10  # seconds of its own, as a real device's messages
    return encode_json("x/", [("heart_rate", "/min", start + i, base + i) for i in range(n)])


def _props(seq, epoch=None, content_type=CONTENT_TYPE_JSON):
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    props.UserProperty = ("seq", str(seq))
    if epoch is not None:
        props.UserProperty = ("epoch", str(epoch))  # paho appends user properties
    return props


async def _device_client(watch, broker):
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                     client_id=watch.device_id, protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(tls_context(watch.broker.ca_file, watch.flash.cert_file,
                                            watch.flash.key_file))
    await client.connect(broker.host, broker.port)
    return client


async def _publish(client, watch, payload, props):
    code = await client.publish(f"devices/{watch.device_id}/telemetry", payload, qos=1,
                                properties=props)
    assert not code.is_failure


async def _stored(core, device_id):
    rows = await core.pool.fetch(
        "SELECT epoch, seq FROM ingested_messages WHERE device_id = $1 ORDER BY epoch, seq",
        device_id)
    return [(r["epoch"], r["seq"]) for r in rows]


async def _quarantined(core, device_id):
    return await core.pool.fetch(
        "SELECT reason, detail, sealed FROM quarantine WHERE device_id = $1 ORDER BY id",
        device_id)


@pytest.fixture
async def gap_bridge(core, pki, broker):
    """A bridge that asks for missing numbers after a short grace period, and again only
    after 30 s: an answer stored a few seconds late on a loaded machine is not asked twice."""
    client = bridge_client(f"svc-bridge-epochs-{time.monotonic_ns()}", tls_context(
        pki.ca.ca_file, pki.bridge_cert, pki.bridge_key))
    running = Bridge(client, core.store, core.registry, BridgeConfig(batch_size=50),
                     resender=Resender(GapTracker(GapConfig(grace_s=1.0, retry_s=30.0,
                                                            check_every_s=0.2)),
                                       PgLedger(core.pool)))
    ready = asyncio.Event()
    task = asyncio.create_task(running.run(broker.host, broker.port, connect_properties(100),
                                           ready), name="epochs-bridge")
    await asyncio.wait_for(ready.wait(), 15)
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await running.close(end_session=True)


async def test_a_reused_sequence_number_with_other_readings_is_quarantined_and_counted(
        core, pki, broker, bridge, tmp_path, caplog):
    patient, _, _ = await new_patient(core, "reuse")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    first, other = _heart_rate(70.0), _heart_rate(90.0)
    caplog.set_level(logging.WARNING)
    await _publish(client, watch, first, _props(1))

    async def stored(n):
        return len(await _stored(core, watch.device_id)) == n
    await wait_until(lambda: stored(1))
    await _publish(client, watch, other, _props(1))  # seq 1 again, other readings
    # Twice in a row, most likely in one batch: the first is stored, the second refused.
    await _publish(client, watch, _heart_rate(60.0), _props(2))
    await _publish(client, watch, _heart_rate(61.0), _props(2, epoch=0))
    await _publish(client, watch, _heart_rate(), _props(3))

    async def both_refused():
        return len(await _quarantined(core, watch.device_id)) == 2
    await wait_until(both_refused)
    await wait_until(lambda: stored(3))  # seq 3 may come in the batch after the refusals
    assert await _stored(core, watch.device_id) == [(0, 1), (0, 2), (0, 3)]
    rows = await _quarantined(core, watch.device_id)
    assert [r["reason"] for r in rows] == ["sequence_reused", "sequence_reused"]
    assert sorted(r["detail"] for r in rows) == [
        "epoch 0 seq 1 was stored with another payload",
        "epoch 0 seq 2 was stored with another payload"]
    assert all(other not in r["sealed"] for r in rows)  # kept for the operator, sealed
    # What is stored for seq 1 is the first message's readings, not the second's.
    series = await core.store.read_series(patient, "heart_rate",
                                          dt.datetime.fromtimestamp(_ORIGIN - 60, dt.UTC),
                                          dt.datetime.now(dt.UTC))
    assert 90.0 not in series.value.tolist() and 70.0 in series.value.tolist()
    assert bridge.stats.quarantined_by_reason["sequence_reused"] == 2
    assert ('healthiot_bridge_quarantined_by_reason_total{reason="sequence_reused"} 2.0'
            in render(bridge.stats))
    logged = [r for r in caplog.records if "reused" in r.getMessage()]
    assert logged and {getattr(r, "device", None) for r in logged} == {watch.device_id}
    assert all("70" not in r.getMessage() for r in logged)  # ids only
    await client.disconnect()
    watch.close()


async def test_the_same_readings_sent_again_are_a_harmless_repeat(core, pki, broker, bridge,
                                                                 tmp_path):
    patient, _, _ = await new_patient(core, "repeat")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    payload = _heart_rate()
    await _publish(client, watch, payload, _props(1))
    await _publish(client, watch, payload, _props(1, epoch=0))  # absent epoch is epoch 0
    await _publish(client, watch, payload, _props(1))
    await _publish(client, watch, _heart_rate(), _props(2))

    async def two():
        return len(await _stored(core, watch.device_id)) == 2
    await wait_until(two)
    await asyncio.sleep(0.3)  # the repeats are handled with or before seq 2
    assert await _stored(core, watch.device_id) == [(0, 1), (0, 2)]
    assert await _quarantined(core, watch.device_id) == []
    assert bridge.stats.duplicates >= 2
    await client.disconnect()
    watch.close()


async def test_past_the_ledgers_exact_horizon_a_repeat_is_acked_once_and_a_reuse_quarantined(
        core, pki, broker, bridge, tmp_path):
    """Once the ledger's rows became runs of numbers (storage/ledger.py), through the real
    bridge: the same message again is a repeat, acknowledged and stored once; the number
    with readings taken later (a counter reset without a new epoch) is quarantined."""
    patient, _, _ = await new_patient(core, "compacted")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    payload = _heart_rate(70.0)
    await _publish(client, watch, payload, _props(1))
    await _publish(client, watch, _heart_rate(71.0), _props(2))
    await wait_until(lambda: _count(core, watch.device_id, 2))
    assert await ledger.compact(core.pool, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == 2
    assert await _stored(core, watch.device_id) == []  # rows gone: runs only
    samples = await core.pool.fetchval("SELECT sum(samples) FROM segments")
    duplicates = bridge.stats.duplicates
    await _publish(client, watch, payload, _props(1))  # PUBACK: acknowledged
    await _publish(client, watch, _heart_rate(95.0), _props(2))  # later readings, seq 2
    await _publish(client, watch, _heart_rate(72.0), _props(3))
    await wait_until(lambda: _count(core, watch.device_id, 3))
    await wait_until(lambda: _one_quarantined(core, watch.device_id))
    assert await core.pool.fetchval("SELECT sum(samples) FROM segments") == samples + 5
    assert bridge.stats.duplicates == duplicates + 1
    assert [r["detail"] for r in await _quarantined(core, watch.device_id)] == [
        "epoch 0 seq 2 was stored with another payload"]
    await client.disconnect()
    watch.close()


async def _count(core, device_id, n):
    return (await core.store.count_stored([device_id]))[0] == n


async def _one_quarantined(core, device_id):
    return len(await _quarantined(core, device_id)) == 1


async def test_after_an_epoch_bump_numbers_from_one_are_stored_and_nothing_is_asked_for(
        core, pki, broker, gap_bridge, tmp_path):
    patient, _, _ = await new_patient(core, "bump")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    await client.subscribe(watch.inbox_topic, qos=1)
    for seq in (1, 2, 3, 4, 5):
        await _publish(client, watch, _heart_rate(), _props(seq))
    for seq in (1, 2, 3):  # reset: numbering from 1 again, in epoch 1, new readings
        await _publish(client, watch, _heart_rate(), _props(seq, epoch=1))

    async def all_stored():
        return len(await _stored(core, watch.device_id)) == 8
    await wait_until(all_stored)
    assert await _stored(core, watch.device_id) == [
        (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 1), (1, 2), (1, 3)]
    assert await _quarantined(core, watch.device_id) == []
    with pytest.raises(TimeoutError):  # past the grace period and several checks
        await asyncio.wait_for(client.messages.get(), 3.0)
    assert gap_bridge.resender.tracker.stats.requests == 0
    await client.disconnect()
    watch.close()


async def test_a_gap_in_a_new_epoch_is_asked_for_in_that_epoch(core, pki, broker,
                                                               gap_bridge, tmp_path):
    patient, _, _ = await new_patient(core, "epochgap")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    await client.subscribe(watch.inbox_topic, qos=1)
    for seq in (1, 2, 3):
        await _publish(client, watch, _heart_rate(), _props(seq))
    for seq in (1, 3):
        await _publish(client, watch, _heart_rate(), _props(seq, epoch=7))
    request = await asyncio.wait_for(client.messages.get(), 10)
    assert json.loads(request.payload) == {"resend": [[2, 2]], "epoch": 7}
    await _publish(client, watch, _heart_rate(), _props(2, epoch=7))  # the answer

    async def complete():
        return len(await _stored(core, watch.device_id)) == 6
    await wait_until(complete)
    assert gap_bridge.resender.tracker.stats.requests == 1
    await client.disconnect()
    watch.close()


async def test_a_simulated_device_reset_numbers_anew_and_loses_nothing(
        core, pki, broker, gap_bridge, tmp_path):
    patient, _, _ = await new_patient(core, "simreset")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    now = time.time()
    for i in range(3):
        watch.measure(now - 100 + 5 * i, now - 95 + 5 * i)
    await watch.flush(timeout=20)
    watch.reset_counter()  # the fault: firmware reset, the counter starts again at 1
    assert watch.next_seq == 1 and watch.epoch == 1
    watch.faults.lost_after_ack.add(2)  # and the broker loses epoch 1's seq 2 after its ack
    watch.interval_s = 0.3
    stop = asyncio.Event()
    running = asyncio.create_task(watch.run(stop))

    async def resent():
        return watch.ledger.resent >= 1
    await wait_until(resent, timeout=30)
    stop.set()
    await running
    await watch.flush(timeout=20)
    last = watch.next_seq - 1
    expected = [(0, 1), (0, 2), (0, 3)] + [(1, s) for s in range(1, last + 1)]

    async def complete():
        return await _stored(core, watch.device_id) == expected
    await wait_until(complete, timeout=20)
    assert await _quarantined(core, watch.device_id) == []
    samples = await core.pool.fetchval(
        "SELECT sum(samples) FROM ingested_messages WHERE device_id = $1", watch.device_id)
    assert samples == watch.ledger.samples
    watch.close()


async def test_a_pack_of_an_unknown_senml_version_or_a_bad_epoch_is_quarantined(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "bver")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    newer = json.loads(_heart_rate())
    newer[0]["bver"] = 11
    await _publish(client, watch, json.dumps(newer).encode(), _props(1))
    await _publish(client, watch, cbor2.dumps([{-1: 11, 0: "heart_rate", 1: "/min", 2: 70}]),
                   _props(2, content_type=CONTENT_TYPE_CBOR))
    await _publish(client, watch, _heart_rate(), _props(3, epoch="-1"))
    await _publish(client, watch, _heart_rate(), _props(4))

    async def handled():
        return len(await _quarantined(core, watch.device_id)) == 3
    await wait_until(handled)
    rows = await _quarantined(core, watch.device_id)
    assert sorted(r["reason"] for r in rows) == [
        "invalid_epoch", "unsupported_version", "unsupported_version"]
    await wait_until(lambda: _is(core, watch.device_id, [(0, 4)]))
    assert bridge.stats.quarantined_by_reason["unsupported_version"] == 2
    await client.disconnect()
    watch.close()


async def _is(core, device_id, expected):
    return await _stored(core, device_id) == expected


def _message(seq, payload, epoch=0, compared=True):
    received = dt.datetime.now(dt.UTC)
    reuse = QuarantineIn("dev-r", "devices/dev-r/telemetry", received, "sequence_reused",
                         f"seq {seq}", payload)
    return MessageIn("dev-r", seq, received, [], 0, epoch=epoch,
                     if_reused=reuse if compared else None)


async def test_storage_tells_a_reuse_from_a_repeat_within_a_batch_and_across_batches(core):
    store = core.store
    assert (await store.ingest_batch([_message(1, b"A")])).new == 1
    # A copy of what is stored is a repeat wherever it comes in the batch; another payload
    # is a reuse, first in the batch or not.
    done = await store.ingest_batch([_message(1, b"B"), _message(1, b"A")])
    assert done.new == 0 and [m.if_reused.payload for m in done.reused] == [b"B"]
    done = await store.ingest_batch([_message(2, b"A"), _message(2, b"A"), _message(2, b"C")])
    assert done.new == 1 and [m.if_reused.payload for m in done.reused] == [b"C"]
    done = await store.ingest_batch([_message(2, b"A", epoch=1), _message(1, b"Z",
                                                                          compared=False)])
    assert done.new == 1 and done.reused == []  # another epoch; a message not compared
    reasons = await core.pool.fetch("SELECT reason, detail FROM quarantine ORDER BY id")
    assert [(r["reason"], r["detail"]) for r in reasons] == [
        ("sequence_reused", "seq 1"), ("sequence_reused", "seq 2")]
    digests = await core.pool.fetch("SELECT digest FROM ingested_messages")
    # Keyed: a dump cannot confirm a guessed payload by hashing it (a random 32-byte
    # digest may well hold the byte "A", so compare with the plain hashes instead).
    plain = {hashlib.sha256(p).digest() for p in (b"A", b"B", b"C", b"Z")}
    assert digests and all(len(r["digest"]) == 32 and r["digest"] not in plain
                           for r in digests)


async def test_the_operator_lists_quarantined_reuses_by_reason_and_device(core, database,
                                                                         tmp_path):
    await core.store.ingest_batch([_message(1, b"A")])
    await core.store.ingest_batch([_message(1, b"B")], [QuarantineIn(
        "dev-q", "devices/dev-q/telemetry", dt.datetime.now(dt.UTC), "malformed",
        "not JSON:\n\tbad", b"x")])
    done = await healthiot(database, tmp_path / "var", "devices", "quarantine", "--reason",
                           "sequence_reused")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "id\treceived_at\tdevice\treason\tdetail" and len(lines) == 2
    assert lines[1].split("\t")[2:] == ["dev-r", "sequence_reused", "seq 1"]
    done = await healthiot(database, tmp_path / "var", "devices", "quarantine", "--device",
                           "dev-q")
    assert done.stdout.splitlines()[1].split("\t")[2:] == ["dev-q", "malformed",
                                                           "not JSON: bad"]
