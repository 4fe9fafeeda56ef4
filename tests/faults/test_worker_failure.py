"""A bridge worker whose consume loop fails: it must not stay connected and take its share
of the telemetry for nobody. The failure is injected in the store (an error the retry loop
does not know); afterwards every reading the devices sent is stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from healthiot.services import Core
from storage.store import Ingested, MessageIn, QuarantineIn, Store
from tests.conftest import (
    BrokerAddress,
    Pki,
    new_patient,
    new_watch,
    running_broker,
    wait_until,
)
from tests.faults.senders import PersistentSender
from tests.faults.test_outages import all_stored, assert_exactly_once

MESSAGES = 60


class FailingOnce(Store):
    """The real store, except that its ``fail_at``-th batch raises an unexpected error."""

    def __init__(self, core: Core, fail_at: int) -> None:
        super().__init__(core.pool, core.keyring)
        self.calls, self.fail_at = 0, fail_at

    async def ingest_batch(self, messages: Sequence[MessageIn],
                           quarantined: Sequence[QuarantineIn] = ()) -> Ingested:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected store failure")
        return await super().ingest_batch(messages, quarantined)


@dataclass
class Worker:
    bridge: Bridge
    broker: BrokerAddress
    task: asyncio.Task[None]
    client_id: str


@contextlib.asynccontextmanager
async def worker(core: Core, pki: Pki, workdir: Path, store: Store, name: str
                 ) -> AsyncIterator[Worker]:
    """A bridge worker on ``store``, connected to a broker of its own (its log is read)."""
    async with running_broker(workdir, pki, f"mosquitto-{name}-{time.monotonic_ns()}"
                              ) as broker:
        client_id = f"svc-bridge-{name}-{time.monotonic_ns()}"
        bridge = Bridge(bridge_client(client_id, tls_context(
            pki.ca.ca_file, pki.bridge_cert, pki.bridge_key), queue_size=200), store,
            core.registry, BridgeConfig(batch_size=10))
        ready = asyncio.Event()
        task = asyncio.create_task(bridge.run(broker.host, broker.services_port,
                                              connect_properties(100), ready), name="bridge")
        try:
            await asyncio.wait_for(ready.wait(), 15)
            yield Worker(bridge, broker, task, client_id)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await bridge.close(end_session=True)


async def test_a_worker_whose_loop_fails_disconnects_recovers_and_nothing_is_lost(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    async with worker(core, pki, workdir, FailingOnce(core, fail_at=2), "failing") as w:
        patient, _, _ = await new_patient(core, "worker.failure")
        senders = [PersistentSender(await new_watch(core, pki, w.broker, tmp_path, patient),
                                    w.broker.host, w.broker.port) for _ in range(2)]
        await asyncio.gather(*(s.send_all(1, MESSAGES) for s in senders))
        await wait_until(lambda: all_stored(core, 2 * MESSAGES), timeout=40)
        await assert_exactly_once(core, senders, MESSAGES)
        assert w.bridge.stats.worker_failures == 1
        # It dropped its connection when the loop failed, then came back on its own.
        log = w.broker.server.log_file.read_text()
        assert log.count(f"as {w.client_id} ") >= 2, log
        assert w.bridge.stats.connected and not w.task.done()


async def test_a_failed_last_batch_fails_the_loop_without_waiting_for_another(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    # The batch is stored beside the loop, which goes on waiting for messages: when none
    # come after it, its failure must still end the loop, or its messages stay unacked
    # and unstored on a connection that looks healthy.
    async with worker(core, pki, workdir, FailingOnce(core, fail_at=1), "last") as w:
        patient, _, _ = await new_patient(core, "worker.failure.last")
        sender = PersistentSender(await new_watch(core, pki, w.broker, tmp_path, patient),
                                  w.broker.host, w.broker.port)
        await sender.send_all(1, 1)
        await wait_until(lambda: all_stored(core, 1), timeout=20)
        assert w.bridge.stats.worker_failures == 1


class FailingAlways(Store):
    """A store whose every batch raises an unexpected error: the worker crashes, backs
    off and comes back, again and again."""

    def __init__(self, core: Core) -> None:
        super().__init__(core.pool, core.keyring)

    async def ingest_batch(self, messages: Sequence[MessageIn],
                           quarantined: Sequence[QuarantineIn] = ()) -> Ingested:
        raise RuntimeError("injected store failure")


async def test_a_worker_retired_during_its_crash_backoff_ends_its_session(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    # A retired worker's session left in the shared group would go on taking its share of
    # the telemetry, stored by nobody, until it expired.
    async with worker(core, pki, workdir, FailingAlways(core), "retired") as w:
        patient, _, _ = await new_patient(core, "worker.retired")
        sender = PersistentSender(await new_watch(core, pki, w.broker, tmp_path, patient),
                                  w.broker.host, w.broker.port)
        await sender.send_all(1, 1)

        async def backing_off() -> bool:
            return w.bridge.stats.worker_failures >= 1 and not w.bridge.stats.connected

        await wait_until(backing_off)
        w.task.cancel()
        await asyncio.gather(w.task, return_exceptions=True)
        await w.bridge.close(end_session=True)

        probe = bridge_client(w.client_id, tls_context(pki.ca.ca_file, pki.bridge_cert,
                                                       pki.bridge_key))
        await probe.connect(w.broker.host, w.broker.services_port, clean_start=False,
                            properties=connect_properties(100))
        assert not probe.session_present
        await probe.disconnect()
