"""A hostile device with a valid certificate fires more than 10,000 random and malformed
MQTT packets and payloads at the real broker and bridge, while an honest device sends.

Fired: fuzzed SenML (JSON and CBOR) under random content types, sequence properties and
user properties, to its own and to others' topics, with random QoS and retain; and, over
raw TLS sockets, packets no client library would send: QoS 3, reserved flags, unknown and
repeated properties, lengths that lie, oversized publishes, random bytes, wills aimed at
another device, forbidden subscriptions. Then: the bridge never stopped, the honest device
lost nothing, and every message the broker acknowledged on the hostile device's telemetry
topic is either stored or quarantined with a reason (counted against what was sent).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from aiopaho import AsyncClient, MqttError
from broker_bridge.bridge import Bridge
from broker_bridge.connection import tls_context
from devices.broker_config import MAX_PACKET_BYTES
from firmware_sim.device import Watch
from healthiot.services import Core
from tests.conftest import (
    BrokerAddress,
    Pki,
    new_patient,
    new_watch,
    running_bridge,
    running_broker,
    wait_until,
)
from tests.faults.senders import PersistentSender
from tests.mqtt_packets import Will, connect_packet, string, varint
from vitals.senml import CONTENT_TYPE_CBOR, CONTENT_TYPE_JSON

SEED = 20261204
LIBRARY_MESSAGES = 7_000  # through paho, QoS 0 and 1
RAW_PACKETS = 3_200  # over raw sockets
HONEST_MESSAGES = 200
# Refusals of a whole message; the others (normalisation's) refuse some samples of a
# message that is stored.
MESSAGE_LEVEL = {"bad_topic", "missing_sequence", "unsupported_content_type", "malformed",
                 "oversized", "unsupported_version", "sequence_reused", "invalid_epoch"}


def _senml(rng: random.Random, now: float) -> object:
    """A SenML pack, valid or subtly not."""
    names = ["heart_rate", "spo2", "weight", "x", "", "heart_rate" * 40, "steps"]
    units = ["/min", "%", "kg", "lb", "Cel", "", "furlong", None]
    records: list[dict[str, object]] = []
    for _ in range(rng.choice([0, 1, 1, 3, 60, 600])):
        record: dict[str, object] = {"n": rng.choice(names), "v": rng.choice(
            [70, 70.5, -1, 0, 1e308, float("inf"), "70", None, True, 2**70, [1]]),
            "t": rng.choice([now, now - 3600, now + 86400 * 365, -1e12, "now", 0, 1e20])}
        if (unit := rng.choice(units)) is not None:
            record["u"] = unit
        if rng.random() < 0.2:
            record[rng.choice(["bn", "bt", "bver", "bu", "bv", "ut", "zz_", "s"])] = rng.choice(
                ["x/", now, 99, 11, 10, -3, "", {"a": 1}])
        records.append(record)
    return rng.choice([records, records, records, {"n": "x"}, "pack", 42, None, [[]]])


def _payload(rng: random.Random, now: float) -> tuple[bytes, str | None]:
    pack = _senml(rng, now)
    kind = rng.random()
    if kind < 0.45:
        body = json.dumps(pack, allow_nan=True).encode()
    elif kind < 0.7:
        try:
            body = cbor2.dumps(pack)
        except (ValueError, TypeError, OverflowError):
            body = b"\xff"
    elif kind < 0.8:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
    elif kind < 0.9:  # deep nesting, huge numbers, NUL, lone surrogates
        body = rng.choice([b"[" * 30_000, b"[{\"n\":\"x\",\"v\":" + b"9" * 5000 + b"}]",
                           b"[{\"n\":\"\\u0000\",\"v\":1}]", b"[{\"n\":\"\\ud800\",\"v\":1}]"])
    else:  # a flipped byte in a valid pack
        valid = bytearray(json.dumps([{"n": "heart_rate", "u": "/min", "v": 70, "t": now}])
                          .encode())
        valid[rng.randrange(len(valid))] = rng.getrandbits(8)
        body = bytes(valid)
    content_type = rng.choice([CONTENT_TYPE_JSON, CONTENT_TYPE_JSON, CONTENT_TYPE_CBOR,
                               "text/plain", "application/senml+xml", "", None, "\u00e9" * 50])
    return body, content_type


async def _fire_library(rng: random.Random, hostile: Watch, victim: Watch,
                        broker: BrokerAddress) -> tuple[int, int]:
    """Returns (publishes fired, those the broker acknowledged on the hostile device's own
    telemetry topic). QoS 0 goes to other topics only, so that every message that can
    reach the bridge from this identity was acknowledged, and is counted."""
    own = f"devices/{hostile.device_id}/telemetry"
    elsewhere = [f"devices/{victim.device_id}/telemetry", f"devices/{hostile.device_id}/inbox",
                 f"devices/{victim.device_id}/inbox", f"devices/{hostile.device_id}/csr",
                 "$SYS/broker/x", "devices", "devices/x/telemetry/extra", "devices/+/x", "#",
                 f"devices/{hostile.device_id}", "$CONTROL/healthiot/v1/disconnect"]
    fired = accepted = 0
    next_seq = 1_000_000
    client: AsyncClient | None = None
    window: list[tuple[asyncio.Task[ReasonCode], bool]] = []

    async def settle() -> None:
        nonlocal accepted
        for task, counted in window:
            try:
                code = await task
            except (MqttError, ValueError):
                continue  # refused by paho, or the connection dropped: nothing promised
            if counted and not code.is_failure:
                accepted += 1
        window.clear()

    now = time.time()
    while fired < LIBRARY_MESSAGES:
        if client is None or not client.is_connected:
            await settle()
            client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                             client_id=hostile.device_id,
                                             protocol=mqtt.MQTTv5), queue_size=10)
            client.paho.tls_set_context(tls_context(hostile.broker.ca_file,
                                                    hostile.flash.cert_file,
                                                    hostile.flash.key_file))
            await client.connect(broker.host, broker.port, timeout=10)
        qos = rng.choice([0, 1, 1, 1])
        topic = own if qos == 1 and rng.random() < 0.8 else rng.choice(elsewhere)
        body, content_type = _payload(rng, now)
        props = Properties(PacketTypes.PUBLISH)
        if content_type is not None:
            props.ContentType = content_type
        seq_choice = rng.random()
        if seq_choice < 0.7:
            next_seq += 1  # unique: a reused number with other content is another test's
            props.UserProperty = ("seq", str(next_seq))
        elif seq_choice < 0.9:
            props.UserProperty = ("seq", rng.choice(["abc", "-5", "1e9999", "", "9" * 400,
                                                     " 7", "0x10", "\u0663"]))
        if rng.random() < 0.2:
            props.UserProperty = (rng.choice(["seq", "epoch", "x", ""]), "y" * rng.randrange(80))
        retain = rng.random() < 0.1
        fired += 1
        window.append((asyncio.ensure_future(client.publish(
            topic, body, qos=qos, properties=props, timeout=20, retain=retain)),
            topic == own))
        if len(window) >= 50:
            await settle()
    await settle()
    if client is not None:
        await client.disconnect()
    return fired, accepted


def _raw_packet(rng: random.Random, device: str, victim: str) -> bytes:
    """One packet that a library would not send, or a hostile one it would."""
    topic = rng.choice([f"devices/{device}/telemetry", f"devices/{victim}/telemetry",
                        "#", "$SYS/x"]).encode()
    kind = rng.randrange(9)
    if kind == 0:  # QoS 3, or reserved flag bits
        header = 0x30 | rng.choice([0x06, 0x0F, 0x07])
        body = string(topic) + b"\x00\x01" + varint(0) + b"[]"
        return bytes([header]) + varint(len(body)) + body
    if kind == 1:  # unknown property ids, repeated ones, a property list that lies
        props = rng.choice([b"\x7f\x00", b"\x03\x00\x01a\x03\x00\x01b", b"\x26\x00",
                            b"\x01\x05", b"\x23\xff\xff", b"\x0b\x00"])
        body = string(topic) + b"\x00\x02" + varint(len(props) + rng.choice([0, 0, 5]))
        body += props + b"[]"
        return bytes([0x32]) + varint(len(body)) + body
    if kind == 2:  # a remaining length longer than what follows
        return bytes([0x32]) + varint(5000) + string(topic)
    if kind == 3:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
    if kind == 4:  # oversized publish
        size = MAX_PACKET_BYTES + rng.randrange(1, 5000)
        body = string(topic) + b"\x00\x03" + varint(0) + b"[" * (size - len(topic) - 5)
        return bytes([0x32]) + varint(len(body)) + body
    if kind == 5:  # a forbidden subscription, including the bridge's shared group
        flt = rng.choice([b"#", b"$share/ingest/devices/+/telemetry", b"$SYS/#",
                          f"devices/{victim}/inbox".encode()])
        body = b"\x00\x04" + varint(0) + string(flt) + b"\x01"
        return bytes([0x82]) + varint(len(body)) + body
    if kind == 6:  # a topic with a wildcard or a NUL in a PUBLISH
        bad = rng.choice([b"devices/+/telemetry", b"#", b"devices/\x00/telemetry"])
        body = string(bad) + b"\x00\x05" + varint(0) + b"[]"
        return bytes([0x32]) + varint(len(body)) + body
    if kind == 7:  # a second CONNECT on the connection
        return connect_packet(device.encode(), None)
    body = string(topic) + b"\x00\x06" + varint(0) + b"[]"  # retained, another's topic
    return bytes([0x33]) + varint(len(body)) + body


def _fire_raw(rng: random.Random, device: Watch, victim: Watch, broker: BrokerAddress) -> int:
    """Raw packets over TLS, a connection of their own each few packets; returns how many
    packets were fired (the CONNECTs included, some carrying a will aimed at the victim)."""
    context = ssl.create_default_context(cafile=str(device.broker.ca_file))
    context.load_cert_chain(str(device.flash.cert_file), str(device.flash.key_file))
    fired = 0
    while fired < RAW_PACKETS:
        will: Will | None = None
        if rng.random() < 0.2:  # at the victim, or at its own topic with a bad format byte
            will = rng.choice([(f"devices/{victim.device_id}/telemetry".encode(), b"[]",
                                rng.randrange(3), rng.random() < 0.5, b""),
                               (f"devices/{device.device_id}/telemetry".encode(), b"[]", 1,
                                False, b"\x01\x07")])
        try:
            with socket.create_connection((broker.host, broker.port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=broker.host) as tls:
                tls.sendall(connect_packet(device.device_id.encode(), will))
                fired += 1
                tls.settimeout(2)
                tls.recv(64)  # CONNACK (or a refusal of the will)
                for _ in range(rng.randrange(1, 12)):
                    tls.sendall(_raw_packet(rng, device.device_id, victim.device_id))
                    fired += 1
                tls.settimeout(0.05)
                try:
                    while tls.recv(4096):
                        pass
                except (TimeoutError, ssl.SSLError, OSError):
                    pass
        except (OSError, ssl.SSLError):
            continue  # the broker closed it: what a broker does with such packets
    return fired


async def _whole_message_refusals(core: Core, device_id: str) -> int:
    rows = await core.pool.fetch(
        "SELECT reason, count(*) AS n FROM quarantine WHERE device_id = $1 GROUP BY reason",
        device_id)
    return sum(r["n"] for r in rows if r["reason"] in MESSAGE_LEVEL)


@pytest.fixture
async def own_broker(workdir: Path, pki: Pki) -> AsyncIterator[BrokerAddress]:
    """A broker of this test's own: what the hostile device leaves behind (sessions, queued
    messages, thousands of log lines) must not reach other tests, nor theirs this one."""
    async with running_broker(workdir, pki, f"mosquitto-hostile-{time.monotonic_ns()}") as address:
        yield address


@pytest.fixture
async def own_bridge(core: Core, own_broker: BrokerAddress, pki: Pki) -> AsyncIterator[Bridge]:
    async with running_bridge(core, own_broker, pki, "hostile") as running:
        yield running


async def test_ten_thousand_hostile_packets_stop_nothing_and_lose_nothing(
        core: Core, pki: Pki, own_broker: BrokerAddress, own_bridge: Bridge,
        tmp_path: Path) -> None:
    broker, bridge = own_broker, own_bridge
    rng = random.Random(SEED)
    patient, _, _ = await new_patient(core, "hostile.owner")
    hostile = await new_watch(core, pki, broker, tmp_path, patient)
    raw_hostile = await new_watch(core, pki, broker, tmp_path, patient)
    victim = await new_watch(core, pki, broker, tmp_path, patient)
    honest = PersistentSender(victim, broker.host, broker.port)
    failures_before = bridge.stats.worker_failures
    connection_before = bridge._generation  # bumped at every (re)connection

    honest_task = asyncio.create_task(honest.send_all(1, HONEST_MESSAGES), name="honest")
    raw_task = asyncio.create_task(asyncio.to_thread(_fire_raw, random.Random(SEED + 1),
                                                     raw_hostile, victim, broker))
    fired, accepted = await _fire_library(rng, hostile, victim, broker)
    raw_fired = await raw_task
    await honest_task
    print(f"\nhostile device: {fired} publishes through paho, {raw_fired} raw packets "
          f"(another hostile identity); {accepted} acknowledged on its telemetry topic")
    assert fired + raw_fired >= 10_000

    async def victim_stored() -> bool:
        return await core.pool.fetchval(
            "SELECT count(*) FROM ingested_messages WHERE device_id = $1",
            victim.device_id) == HONEST_MESSAGES
    await wait_until(victim_stored, timeout=120)
    seqs = [r["seq"] for r in await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq",
        victim.device_id)]
    assert seqs == list(range(1, HONEST_MESSAGES + 1))  # every one, once; nothing of the
    # hostile device's wills or retained messages reached it

    async def all_accounted() -> bool:
        stored = await core.pool.fetchval(
            "SELECT count(*) FROM ingested_messages WHERE device_id = $1", hostile.device_id)
        return stored + await _whole_message_refusals(core, hostile.device_id) >= accepted
    await wait_until(all_accounted, timeout=120)
    stored = await core.pool.fetchval(
        "SELECT count(*) FROM ingested_messages WHERE device_id = $1", hostile.device_id)
    refused = await _whole_message_refusals(core, hostile.device_id)
    # Each acknowledged message is accounted for once: stored (perhaps with some samples
    # quarantined), or quarantined whole with its reason.
    await asyncio.sleep(1)  # nothing more arrives
    assert stored + refused == accepted
    assert await core.pool.fetchval(
        "SELECT count(*) FROM quarantine WHERE device_id = $1", victim.device_id) == 0
    assert bridge.stats.worker_failures == failures_before  # the bridge never stopped
    assert bridge._generation == connection_before  # nor lost its connection once
    assert bridge.stats.connected and bridge.stats.healthy
    reasons = {r["reason"] for r in await core.pool.fetch(
        "SELECT DISTINCT reason FROM quarantine WHERE device_id = $1", hostile.device_id)}
    assert {"malformed", "missing_sequence", "unsupported_content_type"} <= reasons
    print(f"hostile device: {stored} messages stored, {refused} quarantined whole; "
          f"reasons: {sorted(reasons)}")
