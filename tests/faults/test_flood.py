"""A flood past the bridge's receive queue, on the Mosquitto the suite runs (2.0.11).

Mosquitto 2.0.11 honours the Receive Maximum of CONNECT only until the first acks: after
them it sends whatever it holds for the session at once. A store slow on its first batch
lets the devices' messages pile up in the broker meanwhile; the first acks then bring them
all, far more than the bridge's queue holds. The bridge must stop reading its socket (TCP
pushes back on the broker) rather than drop what it received, which would stay unacked and
unstored until the next connection: every message is stored exactly once, on the one
connection, with no failed consume loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from healthiot.services import Core
from storage.store import Ingested, MessageIn, QuarantineIn, Store
from tests.conftest import (
    BrokerAddress,
    Pki,
    mosquitto,
    new_patient,
    new_watch,
    start_mosquitto,
    wait_until,
)
from tests.faults.senders import PersistentSender
from tests.faults.test_outages import all_stored, assert_exactly_once

DEVICES = 4
MESSAGES = 150  # per device: 600 in all, 30 times the queue
QUEUE = 20
RECEIVE_MAXIMUM = 20  # what a broker that honoured it would keep the queue within


class SlowFirstBatch(Store):
    """The real store, except that its first batch waits until the devices have sent all."""

    def __init__(self, core: Core, sent: asyncio.Event) -> None:
        super().__init__(core.pool, core.keyring)
        self.sent = sent
        self.calls = 0

    async def ingest_batch(self, messages: Sequence[MessageIn],
                           quarantined: Sequence[QuarantineIn] = ()) -> Ingested:
        self.calls += 1
        if self.calls == 1:
            await asyncio.wait_for(self.sent.wait(), 60)
        return await super().ingest_batch(messages, quarantined)


async def test_a_flood_past_the_queue_is_stored_once_without_a_reconnection(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    server = mosquitto(workdir, pki, f"mosquitto-flood-{time.monotonic_ns()}")
    await start_mosquitto(server)
    broker = BrokerAddress("localhost", server.port, server)
    client_id = f"svc-bridge-flood-{time.monotonic_ns()}"
    client = bridge_client(client_id, tls_context(pki.ca.ca_file, pki.bridge_cert,
                                                  pki.bridge_key), queue_size=QUEUE)
    sent = asyncio.Event()
    bridge = Bridge(client, SlowFirstBatch(core, sent), core.registry,
                    BridgeConfig(batch_size=10))
    ready = asyncio.Event()
    task = asyncio.create_task(bridge.run(broker.host, broker.services_port,
                                          connect_properties(RECEIVE_MAXIMUM), ready),
                               name="bridge")
    senders: list[PersistentSender] = []
    try:
        await asyncio.wait_for(ready.wait(), 15)
        patient, _, _ = await new_patient(core, "flood")
        senders = [PersistentSender(await new_watch(core, pki, broker, tmp_path, patient),
                                    broker.host, broker.port) for _ in range(DEVICES)]
        await asyncio.gather(*(s.send_all(1, MESSAGES) for s in senders))
        sent.set()
        await wait_until(lambda: all_stored(core, DEVICES * MESSAGES), timeout=60)
        await assert_exactly_once(core, senders, MESSAGES)
        assert client.pauses > 0, "the flood never filled the queue: the test shows nothing"
        assert bridge.stats.reconnects == 0 and bridge.stats.worker_failures == 0
        assert bridge.stats.connected and not task.done()
        assert server.log_file.read_text().count(f"as {client_id} ") == 1
        print(f"\nflood: {DEVICES * MESSAGES} messages through a queue of {QUEUE}; "
              f"reading paused {client.pauses} times; stored once, one connection")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for sender in senders:
            await sender.close()
        await bridge.close(end_session=True)
        server.stop()
