"""LeanClient against the real Mosquitto over mTLS, as the bridge uses it: the bridge's
identity on the services listener, the shared telemetry subscription, devices publishing
with paho. Messages read back exactly; unacked ones come back on a persistent session, acked
ones do not; a broker restart loses nothing; a flood past the queue pauses reading instead
of dropping; publishing, refusals and keepalive behave as paho's AsyncClient does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient, LeanClient, MqttError
from aiopaho.mqtt5 import Message
from broker_bridge.connection import connect_properties, tls_context
from devices.broker_config import SHARED_TELEMETRY, inbox_topic, telemetry_topic
from devices.ca import key_pem, make_csr, new_key, write_private
from devices.identity import new_device_id
from tests.conftest import BrokerAddress, Pki, mosquitto, running_broker, start_mosquitto

CONTENT_TYPE = "application/senml+json"
_ids = itertools.count()


@pytest.fixture(scope="module")
async def lean_broker(workdir: Path, pki: Pki) -> AsyncIterator[BrokerAddress]:
    """A broker of this module's own: no other test's session shares its telemetry."""
    async with running_broker(workdir, pki, "mosquitto-lean") as address:
        yield address


class Device:
    """A device's certificate and a paho client (AsyncClient) on the devices' listener."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.id = new_device_id("watch")
        key = new_key()
        self.key_file, self.cert_file = directory / f"{self.id}.key", directory / f"{self.id}.pem"
        write_private(self.key_file, key_pem(key))
        self.cert_file.write_bytes(pki.ca.issue_client(make_csr(key, self.id)))
        self.ca_file = pki.ca.ca_file
        self.client: AsyncClient | None = None

    async def connect(self, broker: BrokerAddress) -> AsyncClient:
        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id,
                           protocol=mqtt.MQTTv5)
        paho.tls_set_context(tls_context(self.ca_file, self.cert_file, self.key_file))
        paho.max_inflight_messages_set(100)
        self.client = AsyncClient(paho)
        await self.client.connect(broker.host, broker.port)
        return self.client

    async def send(self, seqs: range, qos: int = 1) -> None:
        """Publish ``seqs``, each with its seq user property and a payload naming it; every
        one PUBACKed (a hundred in flight at a time)."""
        assert self.client is not None
        for chunk in itertools.batched(seqs, 100) if hasattr(itertools, "batched") \
                else (seqs[i:i + 100] for i in range(0, len(seqs), 100)):
            codes = await asyncio.gather(*(self.client.publish(
                telemetry_topic(self.id), payload(self.id, seq), qos=qos,
                properties=telemetry_properties(seq), timeout=20) for seq in chunk))
            assert not any(code.is_failure for code in codes)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()


def payload(device_id: str, seq: int) -> bytes:
    return f'[{{"bn":"{device_id}/","n":"heart_rate","u":"/min","v":{seq}}}]'.encode()


def telemetry_properties(seq: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE
    props.UserProperty = ("seq", str(seq))
    return props


def seq_of(message: Message) -> int:
    return int(dict(message.properties.UserProperty)["seq"])


def end_session_properties() -> Properties:
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    return props


@contextlib.asynccontextmanager
async def lean(pki: Pki, broker: BrokerAddress, *, queue_size: int = 10_000,
               keepalive: int = 60) -> AsyncIterator[LeanClient]:
    """A LeanClient as the bridge: its identity, services listener, persistent session,
    subscribed to the shared telemetry; the session ended after (or it takes a share of
    the next test's messages)."""
    client = LeanClient(f"svc-bridge-lean-{next(_ids)}-{time.monotonic_ns()}",
                        tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key),
                        queue_size=queue_size)
    # clean_start=False, as the bridge connects (the id is fresh: no session yet). Mosquitto
    # 2.0.11 does not save over a restart a session begun with clean_start=True.
    await client.connect(broker.host, broker.services_port, keepalive=keepalive,
                         clean_start=False, properties=connect_properties(200))
    await client.subscribe(SHARED_TELEMETRY, qos=1)
    try:
        yield client
    finally:
        if not client.is_connected:
            await client.connect(broker.host, broker.services_port, clean_start=True)
        await client.disconnect(properties=end_session_properties())


async def take(client: LeanClient, n: int, timeout: float = 20.0) -> list[Message]:
    messages: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            while len(messages) < n:
                messages.append(await client.messages.get())  # type: ignore[arg-type]
    except TimeoutError:
        pytest.fail(f"{len(messages)} of {n} messages in {timeout}s: "
                    f"seq {sorted(seq_of(m) for m in messages)}")
    return messages


async def nothing_more(client: LeanClient, wait: float = 1.0) -> None:
    with contextlib.suppress(TimeoutError):
        extra = await asyncio.wait_for(client.messages.get(), wait)
        pytest.fail(f"an unexpected message: {extra!r}")


async def test_a_devices_messages_are_read_back_exactly(pki: Pki, lean_broker: BrokerAddress,
                                                        tmp_path: Path) -> None:
    device = Device(pki, tmp_path)
    await device.connect(lean_broker)
    async with lean(pki, lean_broker) as client:
        before = time.monotonic()
        await device.send(range(1, 21))
        await device.send(range(21, 23), qos=0)
        got = await take(client, 22)
        client.ack_many(got)
        assert [seq_of(m) for m in got] == list(range(1, 23))
        for m in got:
            assert m.topic == telemetry_topic(device.id)
            assert m.payload == payload(device.id, seq_of(m))
            assert m.properties.ContentType == CONTENT_TYPE
            assert m.properties.UserProperty == [("seq", str(seq_of(m)))]
            assert (m.qos, m.dup, m.retain) == ((1, False, False) if seq_of(m) <= 20
                                                else (0, False, False))
            assert (m.mid > 0) == (m.qos == 1)
            assert before <= m.timestamp <= time.monotonic()
        await nothing_more(client)
    await device.close()


async def test_unacked_messages_come_back_on_the_session_and_acked_ones_do_not(
        pki: Pki, lean_broker: BrokerAddress, tmp_path: Path) -> None:
    device = Device(pki, tmp_path)
    await device.connect(lean_broker)
    async with lean(pki, lean_broker) as client:
        await device.send(range(1, 11))
        got = await take(client, 10)
        client.ack_many(got[:4])
        client.ack(got[4])
        await client.disconnect()  # after the acks on the same connection: they arrive first
        assert not client.is_connected
        await client.connect(lean_broker.host, lean_broker.services_port, clean_start=False,
                             properties=connect_properties(200))
        assert client.session_present
        client.ack_many(got)  # of the last connection: not sent on this one
        again = await take(client, 5)
        assert sorted(seq_of(m) for m in again) == list(range(6, 11))
        assert all(m.dup for m in again)
        client.ack_many(again)
        await nothing_more(client)
    await device.close()


async def test_messages_held_through_a_broker_restart_all_arrive(
        pki: Pki, workdir: Path, tmp_path: Path) -> None:
    server = mosquitto(workdir, pki, f"mosquitto-lean-restart-{time.monotonic_ns()}")
    await start_mosquitto(server)
    broker = BrokerAddress("localhost", server.port, server)
    device = Device(pki, tmp_path)
    watcher = LeanClient("svc-bridge-lean-watcher", tls_context(
        pki.ca.ca_file, pki.bridge_cert, pki.bridge_key))
    try:
        await device.connect(broker)
        async with lean(pki, broker) as client:
            await device.send(range(1, 31))
            first = await take(client, 30)  # received, never acked
            await client.disconnect()
            await device.send(range(31, 61))  # queued for the session while it is away
            # A client connected when the broker stops: it hears of it, its waiters fail.
            await watcher.connect(broker.host, broker.services_port)
            lost: list[object] = []
            watcher.on_disconnect = lost.append
            server.stop()
            await asyncio.wait_for(watcher.disconnected.wait(), 10)
            assert lost == [7] and not watcher.is_connected
            with pytest.raises(MqttError):
                await watcher.publish(inbox_topic(device.id), b"{}", qos=1)
            await start_mosquitto(server)
            await client.connect(broker.host, broker.services_port, clean_start=False,
                                 properties=connect_properties(200))
            assert client.session_present
            await client.subscribe(SHARED_TELEMETRY, qos=1)  # as the bridge does, each time
            got = await take(client, 60)
            client.ack_many(got)
            assert sorted(seq_of(m) for m in got) == list(range(1, 61))
            assert {seq_of(m) for m in first} == set(range(1, 31))
            assert all(m.dup for m in got if seq_of(m) <= 30)
            await nothing_more(client)
    finally:
        await device.close()
        server.stop()


async def test_a_flood_past_the_queue_pauses_reading_and_loses_nothing(
        pki: Pki, lean_broker: BrokerAddress, tmp_path: Path) -> None:
    device = Device(pki, tmp_path)
    await device.connect(lean_broker)
    total = 2500
    async with lean(pki, lean_broker, queue_size=50) as client:
        dropped: list[object] = []
        client.on_disconnect = dropped.append
        sending = asyncio.create_task(device.send(range(1, total + 1)), name="device")
        seqs: list[int] = []
        async with asyncio.timeout(120):
            while len(seqs) < total:
                batch = [await client.messages.get()]
                while len(batch) < 25 and not client.messages.empty():
                    batch.append(client.messages.get_nowait())
                await asyncio.sleep(0.005)  # a slow consumer: the store's commit
                client.ack_many(batch)  # type: ignore[arg-type]
                seqs += [seq_of(m) for m in batch]  # type: ignore[arg-type]
                assert client.messages.qsize() <= 50  # never over the limit
        await sending
        assert sorted(seqs) == list(range(1, total + 1)), "lost or duplicated messages"
        assert client.pauses > 0, "the queue never filled: the test shows nothing"
        assert client.is_connected and not dropped
        await nothing_more(client)
        print(f"\nlean flood: {total} messages through a queue of 50, "
              f"reading paused {client.pauses} times, one connection")
    await device.close()


async def test_a_publish_to_a_device_inbox_is_acknowledged_and_delivered(
        pki: Pki, lean_broker: BrokerAddress, tmp_path: Path) -> None:
    device = Device(pki, tmp_path)
    inbox = await device.connect(lean_broker)
    await inbox.subscribe(inbox_topic(device.id), qos=1)
    async with lean(pki, lean_broker) as client:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.UserProperty = ("kind", "resend")
        props.MessageExpiryInterval = 600
        codes = await asyncio.gather(*(client.publish(inbox_topic(device.id), b'{"n":%d}' % i,
                                                      qos=1, properties=props)
                                       for i in range(30)))
        assert [c.value for c in codes] == [0] * 30 and not any(c.is_failure for c in codes)
        received = [await asyncio.wait_for(inbox.messages.get(), 10) for _ in range(30)]
        assert sorted(m.payload for m in received) == sorted(b'{"n":%d}' % i for i in range(30))
        assert received[0].properties.ContentType == "application/json"
        assert received[0].properties.UserProperty == [("kind", "resend")]
        # A topic the bridge may not write: the PUBACK's refusal is returned, not raised.
        refused = await client.publish(telemetry_topic(device.id), b"{}", qos=1)
        assert refused.is_failure and refused.value == 0x87
        assert client.is_connected
    await device.close()


async def test_a_refused_subscription_raises_with_the_brokers_reason_code(
        pki: Pki, lean_broker: BrokerAddress) -> None:
    async with lean(pki, lean_broker) as client:
        with pytest.raises(MqttError) as refused:
            await client.subscribe("#", qos=1)
        assert refused.value.reason_code == 0x87
        assert client.is_connected


async def test_keepalive_holds_an_idle_connection(pki: Pki, lean_broker: BrokerAddress,
                                                  tmp_path: Path) -> None:
    # Mosquitto ends a connection silent for 1.5 keepalives (6 s): only PINGREQs keep it.
    # The PINGREQ goes 4-4.5 s after the last write: 1.5 s to spare on a loaded machine.
    async with lean(pki, lean_broker, keepalive=4) as client:
        await asyncio.sleep(10)
        assert client.is_connected
        device = Device(pki, tmp_path)
        await device.connect(lean_broker)
        await device.send(range(1, 2))
        [message] = await take(client, 1)
        client.ack(message)
        assert seq_of(message) == 1
        await device.close()
