"""Misbehaving devices (issue 3), each a fault of the simulated firmware (firmware_sim
Faults), driven through the device class against the real broker, bridge and database, and
the backend's documented reaction to each.

Tests that show the same reaction with hand-made packets: test_broker_security.py (another
device's topic), test_bridge.py (malformed payload), test_takeover.py (another device's
client id)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker_bridge.connection import connect_properties
from devices.broker_config import MAX_PACKET_BYTES
from devices.takeover import TakeoverStats, TakeoverStore, TakeoverWatcher
from firmware_sim.device import Watch
from healthiot.localservers import MosquittoServer, free_port
from healthiot.services import Core, new_bridge
from tests.conftest import BrokerAddress, Pki, new_patient, new_watch, wait_until
from vitals.senml import MAX_PAYLOAD_BYTES

NOT_AUTHORIZED = 0x87


@pytest.fixture
async def own_broker(pki: Pki, workdir: Path) -> AsyncIterator[BrokerAddress]:
    """A broker of this test's own: the takeover watcher reads a broker's whole log, and
    the takeovers made here must not show up in other tests' counts (test_takeover.py)."""
    directory = workdir / f"mosquitto-misbehaving-{time.monotonic_ns()}"
    server = MosquittoServer(directory, port=free_port(), services_port=free_port(),
                             bind="127.0.0.1",
                             clients_ca=pki.ca.clients_ca_file.read_bytes(),
                             cert=pki.server_cert.read_bytes(),
                             key=pki.server_key.read_bytes(),
                             log_file=directory.with_suffix(".log"))
    await server.start()
    try:
        yield BrokerAddress("localhost", server.port, server)
    finally:
        server.stop()


@pytest.fixture
async def own_stack(core: Core, pki: Pki, own_broker: BrokerAddress
                    ) -> AsyncIterator[TakeoverWatcher]:
    """A bridge and a takeover watcher on ``own_broker``."""
    bridge = new_bridge(core, client_id="svc-bridge-misbehaving", ca_file=pki.ca.ca_file,
                        cert=pki.bridge_cert, key=pki.bridge_key, batch_size=100)
    watcher = TakeoverWatcher(own_broker.server.log_file, TakeoverStore(core.pool),
                              stats=TakeoverStats(), poll_interval_s=0.1)
    ready, caught_up = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(bridge.run(own_broker.host, own_broker.services_port,
                                            connect_properties(200), ready)),
             asyncio.create_task(watcher.run(caught_up))]
    await asyncio.wait_for(asyncio.gather(ready.wait(), caught_up.wait()), 15)
    try:
        yield watcher
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.close(end_session=True)


async def _stored(core: Core, device_id: str) -> int:
    return int(await core.pool.fetchval(
        "SELECT count(*) FROM ingested_messages WHERE device_id = $1", device_id))


async def _quarantined(core: Core) -> list[str]:
    return [r["reason"] for r in await core.pool.fetch("SELECT reason FROM quarantine")]


def _measure(watch: Watch) -> None:
    now = time.time()
    watch.measure(now - 10, now)


async def _retry_for(watch: Watch, seconds: float) -> None:
    """Let the device try to deliver for ``seconds`` (it never succeeds: a refused message
    is kept and sent again)."""
    await watch.flush(timeout=seconds)


async def test_a_device_publishing_on_another_devices_topic_is_refused_and_keeps_it(
        core: Core, pki: Pki, broker: BrokerAddress, bridge: object, tmp_path: object) -> None:
    patient, _, _ = await new_patient(core, "foreign.topic")
    victim = await new_watch(core, pki, broker, tmp_path, patient)
    rogue = await new_watch(core, pki, broker, tmp_path, patient)
    rogue.faults.foreign_device = victim.device_id
    refusals: list[int] = []
    _measure(rogue)
    task = asyncio.create_task(_retry_for(rogue, 4.0))

    async def refused() -> bool:
        if rogue._conn is not None and rogue.online and not refusals:
            # The PUBACK's reason code, read off the live connection the device uses.
            code = await rogue._conn.publish(rogue.telemetry_topic, b"[]", qos=1)
            refusals.append(code.value)
        return rogue.ledger.refused >= 2
    await wait_until(refused)
    # Mosquitto 2 answers an ACL-denied QoS 1 publish from an MQTT v5 client with a PUBACK
    # carrying 0x87 (not authorized) and keeps the session: no silent drop, no disconnect.
    assert refusals == [NOT_AUTHORIZED]
    assert rogue.online
    await task
    assert rogue.ledger.messages == 0 and rogue.pending == 1  # kept on flash, as refused
    assert await _stored(core, victim.device_id) == 0
    assert await _stored(core, rogue.device_id) == 0
    assert await _quarantined(core) == []  # never reached the bridge

    # Back on its own topic, the very message it kept is delivered and stored.
    rogue.faults.foreign_device = None
    await rogue.flush(timeout=10)
    assert rogue.pending == 0 and rogue.ledger.messages == 1

    async def delivered() -> bool:
        return await _stored(core, rogue.device_id) == 1
    await wait_until(delivered)
    assert await _stored(core, victim.device_id) == 0
    victim.close()
    rogue.close()


async def test_a_packet_above_the_brokers_limit_ends_the_connection_and_stays_on_flash(
        core: Core, pki: Pki, broker: BrokerAddress, bridge: object, tmp_path: object) -> None:
    patient, _, _ = await new_patient(core, "oversized.packet")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    watch.faults.payload_bytes = MAX_PACKET_BYTES + 1024
    _measure(watch)
    assert len(watch._outbox[0].payload) == MAX_PACKET_BYTES + 1024
    await _retry_for(watch, 4.0)
    # Mosquitto 2 disconnects a client whose packet exceeds max_packet_size, with no PUBACK:
    # the device counts no refusal, reconnects, sends it again (paho resends the unacked
    # packet on the new connection), is cut off again, and keeps it on flash.
    log = broker.server.log_file.read_text(errors="replace")
    assert log.count(f"Client {watch.device_id} disconnected due to oversize packet") >= 2
    assert watch.ledger.refused == 0
    assert watch.ledger.messages == 0 and watch.pending == 1
    assert await _stored(core, watch.device_id) == 0
    assert await _quarantined(core) == []
    watch.close()


async def test_a_payload_above_the_senml_limit_is_quarantined_as_oversized(
        core: Core, pki: Pki, broker: BrokerAddress, bridge: object, tmp_path: object) -> None:
    patient, _, _ = await new_patient(core, "oversized.senml")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    watch.faults.payload_bytes = MAX_PAYLOAD_BYTES + 1024  # under the broker's packet limit
    assert MAX_PAYLOAD_BYTES + 1024 + 200 < MAX_PACKET_BYTES
    _measure(watch)
    watch.faults.payload_bytes = 0
    _measure(watch)  # a good message after the oversized one
    await watch.flush(timeout=10)
    assert watch.pending == 0 and watch.ledger.refused == 0  # the broker took both

    async def handled() -> bool:
        return await _stored(core, watch.device_id) == 1 and bool(await _quarantined(core))
    await wait_until(handled)
    assert await _quarantined(core) == ["oversized"]
    assert await core.pool.fetchval(
        "SELECT min(seq) FROM ingested_messages WHERE device_id = $1", watch.device_id) == 2
    watch.close()


async def test_a_malformed_payload_is_quarantined_and_the_consumer_goes_on(
        core: Core, pki: Pki, broker: BrokerAddress, bridge: object, tmp_path: object) -> None:
    patient, _, _ = await new_patient(core, "malformed")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    watch.faults.malformed = True
    _measure(watch)
    watch.faults.malformed = False
    _measure(watch)
    await watch.flush(timeout=10)
    assert watch.pending == 0

    async def handled() -> bool:
        return await _stored(core, watch.device_id) == 1 and bool(await _quarantined(core))
    await wait_until(handled)
    assert await _quarantined(core) == ["malformed"]
    watch.close()


async def test_a_device_asking_for_another_devices_client_id_gets_its_own_and_cuts_nobody_off(
        core: Core, pki: Pki, own_broker: BrokerAddress, own_stack: TakeoverWatcher,
        tmp_path: Path) -> None:
    patient, _, _ = await new_patient(core, "takeover.sim")
    victim = await new_watch(core, pki, own_broker, tmp_path, patient)
    intruder = await new_watch(core, pki, own_broker, tmp_path, patient)
    intruder.faults.client_id = victim.device_id
    stop, intruding = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(victim.run(stop))

    async def victim_sending() -> bool:
        return victim.online and victim.ledger.messages >= 2
    await wait_until(victim_sending)
    victim_connection = victim._conn
    intrusion = asyncio.create_task(intruder.serve(intruding))

    async def intruder_in() -> bool:
        return intruder.online
    await wait_until(intruder_in)
    sent = victim.ledger.messages

    async def victim_goes_on() -> bool:
        return victim.ledger.messages >= sent + 3
    await wait_until(victim_goes_on)
    # The broker gave the intruder its own id: the victim's connection never dropped.
    assert victim._conn is victim_connection and not victim_connection.disconnected.is_set()
    log = own_broker.server.log_file.read_text()
    assert f"as {intruder.device_id} (p5" in log and "already connected" not in log
    assert await TakeoverStore(core.pool).involving(victim.device_id) == []
    intruding.set()
    await intrusion
    stop.set()
    await running
    await victim.flush(10)
    assert victim.pending == 0

    async def all_stored() -> bool:
        return await _stored(core, victim.device_id) == victim.ledger.messages
    await wait_until(all_stored)
    seqs = [r["seq"] for r in await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq",
        victim.device_id)]
    assert seqs == list(range(1, victim.ledger.messages + 1))
    victim.close()
    intruder.close()
