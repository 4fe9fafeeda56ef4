"""A hostile device with a valid certificate, against the real broker and bridge: it can
subscribe to nothing but its own inbox, and another device loses nothing meanwhile.

Before the broker's policy plugin, Mosquitto 2.0 granted any subscription (its acl_file
checks only publish and delivery): a device joined ``$share/ingest/devices/+/telemetry``,
took every second message of every device and dropped it on the read ACL after the sender
had its PUBACK.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from broker_bridge.connection import tls_context
from devices.takeover import TakeoverStats, TakeoverStore, TakeoverWatcher, render
from firmware_sim.device import Watch
from healthiot.services import Core
from tests.conftest import (
    BrokerAddress,
    Pki,
    in_background,
    new_patient,
    new_watch,
    wait_until,
)
from tests.integration.test_bridge import _connected_device, _heart_rate, _props
from tests.mqtt_packets import Will, connect_packet, string, varint
from vitals.senml import encode_json

MESSAGES = 1_000


def _forbidden_filters(own: str, other: str) -> list[str]:
    return ["#", "$SYS/#", "devices/+/inbox", f"devices/{other}/inbox",
            "$share/ingest/devices/+/telemetry", "$share/x/devices/+/telemetry",
            "$share/renew/devices/+/csr", "devices/+/telemetry", f"devices/{other}/telemetry",
            f"devices/{own}/telemetry", f"devices/{own}/#", "devices/#", "+/+/+",
            f"$share/ingest/devices/{own}/inbox", "$CONTROL/#"]


async def _suback_codes(client: AsyncClient, topic_filter: str) -> list[int]:
    """The reason codes of one SUBSCRIBE (>= 0x80: refused)."""
    result, mid = client.paho.subscribe(topic_filter, 1)
    assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
    future = client._subscribed[mid] = asyncio.get_running_loop().create_future()
    try:
        codes = await asyncio.wait_for(future, 5)
    finally:
        client._subscribed.pop(mid, None)
    return [code.value for code in codes]


def _mosquitto_sub(device: Watch, broker: BrokerAddress, topic_filter: str,
                   client_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_sub", "-V", "mqttv5", "-h", "localhost", "-p", str(broker.port),
         "--cafile", str(device.broker.ca_file), "--cert", str(device.flash.cert_file),
         "--key", str(device.flash.key_file), "-i", client_id, "-q", "1", "-t", topic_filter,
         "-W", "3", "-d"], capture_output=True, text=True, timeout=20, check=False)


async def test_a_device_can_subscribe_to_its_own_inbox_only(
        core: Core, pki: Pki, broker: BrokerAddress, tmp_path: Path) -> None:
    patient, _, _ = await new_patient(core, "attack.subscriber")
    attacker = await new_watch(core, pki, broker, tmp_path, patient)
    other = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _connected_device(attacker, broker)
    try:
        refused = {f: await _suback_codes(client, f)
                   for f in _forbidden_filters(attacker.device_id, other.device_id)}
        assert {f: c for f, c in refused.items() if c[0] < 0x80} == {}
        assert await _suback_codes(client, f"devices/{attacker.device_id}/inbox") == [1]
    finally:
        await client.disconnect()
    # The same with Mosquitto's own client, under any client id it asks for.
    for topic_filter in ("$share/ingest/devices/+/telemetry", "#", "$SYS/#"):
        done = await asyncio.to_thread(_mosquitto_sub, attacker, broker, topic_filter,
                                       "zz-other-client")
        assert "All subscription requests were denied" in done.stdout + done.stderr, done

    # Each refusal is in the broker's log, where the log watcher counts it for Prometheus.
    stats = TakeoverStats()
    watcher = TakeoverWatcher(broker.server.log_file, TakeoverStore(core.pool), stats=stats,
                              poll_interval_s=0.05)
    caught_up = asyncio.Event()
    async with in_background(watcher.run(caught_up), "the log watcher", caught_up):
        pass
    mine = [line for line in broker.server.log_file.read_text().splitlines()
            if line.endswith(f"healthiot: refused subscribe by {attacker.device_id}")]
    assert len(mine) == len(refused) + 3
    assert stats.refusals["subscribe"] >= len(mine)
    assert 'healthiot_broker_refusals_total{kind="subscribe"}' in render(stats)


async def test_another_devices_messages_are_all_stored_while_an_attacker_tries_to_subscribe(
        core: Core, pki: Pki, broker: BrokerAddress, bridge: object, tmp_path: Path) -> None:
    patient, _, _ = await new_patient(core, "attack.victim")
    victim = await new_watch(core, pki, broker, tmp_path, patient)
    attacker = await new_watch(core, pki, broker, tmp_path, patient)
    hostile = await _connected_device(attacker, broker)
    sender = await _connected_device(victim, broker)
    stop = asyncio.Event()
    granted: list[str] = []

    async def keep_trying() -> None:  # a fresh attempt on every group, all the time
        while not stop.is_set():
            for topic_filter in ("$share/ingest/devices/+/telemetry", "devices/+/telemetry",
                                 "#", f"$share/ingest/devices/{victim.device_id}/telemetry"):
                if (await _suback_codes(hostile, topic_filter))[0] < 0x80:
                    granted.append(topic_filter)
            await asyncio.sleep(0.01)

    attack = asyncio.create_task(keep_trying(), name="attacker")
    try:
        topic = f"devices/{victim.device_id}/telemetry"
        pending = []
        origin = time.time() - 2 * MESSAGES  # each message two seconds of its own, past
        for seq in range(1, MESSAGES + 1):
            payload = encode_json("x/", [("heart_rate", "/min", origin + 2 * seq + i, 70.0)
                                         for i in range(2)])
            pending.append(asyncio.create_task(
                sender.publish(topic, payload, properties=_props(seq))))
            if len(pending) >= 50:  # a window of 50 unacknowledged messages
                codes = await asyncio.gather(*pending)
                assert not any(c.is_failure for c in codes)
                pending = []
        assert not any(c.is_failure for c in await asyncio.gather(*pending))

        async def all_stored() -> bool:
            return await core.pool.fetchval(
                "SELECT count(*) FROM ingested_messages WHERE device_id = $1",
                victim.device_id) == MESSAGES
        try:
            await wait_until(all_stored, timeout=60)
        except BaseException:  # say what was seen: a share taken, or a bridge stalled
            stored = await core.pool.fetchval(
                "SELECT count(*) FROM ingested_messages WHERE device_id = $1",
                victim.device_id)
            stats = bridge.stats  # type: ignore[attr-defined]
            print(f"stored={stored}/{MESSAGES} granted={granted} bridge: "
                  f"messages={stats.messages} duplicates={stats.duplicates} "
                  f"worker_failures={stats.worker_failures} healthy={stats.healthy} "
                  f"connected={stats.connected} backlog={stats.backlog}")
            raise
    finally:
        stop.set()
        await attack
        await sender.disconnect()
        await hostile.disconnect()
    assert granted == []
    seqs = [r["seq"] for r in await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq",
        victim.device_id)]
    assert seqs == list(range(1, MESSAGES + 1))
    assert hostile.messages.empty()  # nothing of the victim's ever reached the attacker


async def test_a_device_cannot_publish_to_the_control_topic_nor_retain_anything(
        core: Core, pki: Pki, broker: BrokerAddress, tmp_path: Path) -> None:
    patient, _, _ = await new_patient(core, "attack.control")
    attacker = await new_watch(core, pki, broker, tmp_path, patient)
    victim = await new_watch(core, pki, broker, tmp_path, patient)
    own = await _connected_device(victim, broker)
    hostile = await _connected_device(attacker, broker)
    try:
        props = Properties(PacketTypes.PUBLISH)
        code = await hostile.publish("$CONTROL/healthiot/v1/disconnect",
                                     victim.device_id.encode(), properties=props)
        assert code.is_failure  # not the revoker: refused, and nobody is disconnected
        for topic in (f"devices/{victim.device_id}/inbox", "devices/x/telemetry", "$SYS/x"):
            assert (await hostile.publish(topic, b"{}", properties=props)).is_failure
        # Nothing retained, not even on its own topic: it would reach every later bridge.
        assert (await hostile.publish(f"devices/{attacker.device_id}/telemetry",
                                      _heart_rate(), properties=_props(1),
                                      retain=True)).is_failure
        await asyncio.sleep(0.3)
        assert own.is_connected
    finally:
        await hostile.disconnect()
        await own.disconnect()


async def test_services_still_share_their_subscription(
        core: Core, pki: Pki, broker: BrokerAddress, tmp_path: Path) -> None:
    """The bridge identity, on the services' listener, joins the shared group (the
    bridge fixture does too) and reads telemetry; on the devices' listener its id is
    imposed but its grant stays its own."""
    context = tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key)
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                     client_id="svc-bridge-share-probe", protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(context)
    await client.connect(broker.host, broker.services_port, timeout=5)
    try:
        assert await _suback_codes(client, "$share/probe/devices/+/telemetry") == [1]
        assert (await _suback_codes(client, "#"))[0] >= 0x80  # its grant, not more
        with_inbox = await _suback_codes(client, "devices/+/inbox")
        assert with_inbox[0] >= 0x80  # it writes inboxes, never reads them
    finally:
        await client.disconnect(timeout=5)


def _raw_session(device: Watch, broker: BrokerAddress, will: Will | None,
                 packets: list[bytes]) -> bytes:
    """Over a TLS socket: CONNECT (with ``will``), then ``packets``; returns what the broker
    answered after the CONNACK. The connection is then dropped without a DISCONNECT."""
    context = ssl.create_default_context(cafile=str(device.broker.ca_file))
    context.load_cert_chain(str(device.flash.cert_file), str(device.flash.key_file))
    with socket.create_connection((broker.host, broker.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=broker.host) as tls:
        tls.sendall(connect_packet(device.device_id.encode(), will))
        assert tls.recv(64)[:1] == b"\x20"  # CONNACK
        answered = b""
        for packet in packets:
            tls.sendall(packet)
            answered += tls.recv(64)
        return answered


async def test_a_bad_format_byte_or_a_will_from_a_device_never_reaches_the_bridge(
        core: Core, pki: Pki, broker: BrokerAddress, tmp_path: Path) -> None:
    """Mosquitto forwards any Payload Format Indicator, and a client library reading one
    other than 0 or 1 drops its connection: one such message, redelivered at every
    reconnection, would keep the bridge off for good. Seen first by the hostile-device
    fuzz test; a will carries it past the ACL too."""
    patient, _, _ = await new_patient(core, "attack.format")
    device = await new_watch(core, pki, broker, tmp_path, patient)
    subscriber = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                         client_id="svc-bridge-format-probe",
                                         protocol=mqtt.MQTTv5))
    subscriber.paho.tls_set_context(tls_context(pki.ca.ca_file, pki.bridge_cert,
                                                pki.bridge_key))
    await subscriber.connect(broker.host, broker.services_port, timeout=5)
    await subscriber.subscribe("devices/+/telemetry")
    topic = f"devices/{device.device_id}/telemetry".encode()
    try:
        props = b"\x01\x05"  # Payload Format Indicator 5
        body = string(topic) + b"\x00\x07" + varint(len(props)) + props + b"[]"
        answer = await asyncio.to_thread(_raw_session, device, broker, None,
                                         [bytes([0x32]) + varint(len(body)) + body])
        assert answer[:1] == b"\x40" and answer[4:5] == b"\x87"  # PUBACK, not authorized
        # A will of any kind, at its own topic, left by a connection dropped uncleanly.
        for will_props in (b"\x01\x07", b""):
            await asyncio.to_thread(_raw_session, device, broker,
                                    (topic, b"[]", 1, False, will_props), [])
        await asyncio.sleep(1.0)
        assert subscriber.is_connected
        assert subscriber.messages.empty()
    finally:
        await subscriber.disconnect()
