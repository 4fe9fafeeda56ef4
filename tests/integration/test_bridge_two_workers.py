"""Two bridge workers on the shared subscription: each device's messages are spread over
both, so each worker sees holes in every device's numbering. The gap tracker must take none
of them for a loss (it asks the database first): no resend request at all, every message
stored once, and both workers did part of the work.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from broker_bridge.gaps import GapConfig, GapTracker, PgLedger, Resender
from healthiot.services import Core
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

MESSAGES = 120  # per device
# Short, so that the checks run many times while the devices publish: a hole that the other
# worker fills is older than the grace period at every check after the first two seconds.
# Not shorter: the other worker's commit may take a second on a loaded machine.
GAPS = GapConfig(grace_s=2.0, check_every_s=0.2)


async def test_two_workers_share_every_device_and_ask_for_no_resend(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    server = mosquitto(workdir, pki, f"mosquitto-two-workers-{time.monotonic_ns()}")
    await start_mosquitto(server)
    broker = BrokerAddress("localhost", server.port, server)
    bridges, tasks = [], []
    for i in range(2):
        client = bridge_client(f"svc-bridge-two-{i}-{time.monotonic_ns()}",
                               tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key),
                               queue_size=100)
        bridge = Bridge(client, core.store, core.registry, BridgeConfig(batch_size=10),
                        resender=Resender(GapTracker(GAPS), PgLedger(core.pool)))
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(bridge.run(broker.host, broker.services_port,
                                                    connect_properties(50), ready),
                                         name=f"bridge-{i}"))
        await asyncio.wait_for(ready.wait(), 15)
        bridges.append(bridge)
    senders: list[PersistentSender] = []
    try:
        patient, _, _ = await new_patient(core, "two-workers-gaps")
        senders = [PersistentSender(await new_watch(core, pki, broker, tmp_path, patient),
                                    broker.host, broker.port) for _ in range(3)]
        await asyncio.gather(*(s.send_all(1, MESSAGES, pause_s=0.02) for s in senders))
        await wait_until(lambda: all_stored(core, 3 * MESSAGES), timeout=60)
        await asyncio.sleep(3 * GAPS.grace_s)  # checks after the last message, too
        await assert_exactly_once(core, senders, MESSAGES)
        stored = [b.stats.messages for b in bridges]
        assert all(n > 0 for n in stored), stored  # each saw holes in each numbering
        requests = [b.resender.tracker.stats.requests for b in bridges if b.resender]
        assert requests == [0, 0]
        print(f"\ntwo workers: stored {stored}, resend requests {requests}")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bridge in bridges:
            await bridge.close(end_session=True)
        for sender in senders:
            await sender.close()
        server.stop()
