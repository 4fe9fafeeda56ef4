"""A broker killed with messages it had acknowledged but not yet handed to the bridge: the
devices reconnect, the bridge finds the gaps and asks, and every message ends up stored
exactly once. A broker of the test's own, since it is killed."""

import asyncio
import time
from dataclasses import dataclass

import pytest

from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, connect_properties, tls_context
from broker_bridge.gaps import GapConfig, GapTracker, PgLedger, Resender
from tests.conftest import mosquitto, new_patient, new_watch, start_mosquitto, wait_until


@dataclass(frozen=True)
class _Address:
    host: str
    port: int  # the devices'
    services_port: int  # the bridge's


@pytest.fixture
async def own_broker(workdir, pki):
    # No autosave within the test: what the broker queued lives in its memory alone.
    server = mosquitto(workdir, pki, f"mosquitto-crash-{time.monotonic_ns()}",
                       autosave_s=3600)
    await start_mosquitto(server)
    yield server
    server.stop()


class _BridgeProcess:
    """A bridge worker that can be stopped abruptly and started again (same client id,
    fresh memory: a restarted process)."""

    def __init__(self, core, pki, address):
        self._core, self._pki, self._address = core, pki, address
        self._client_id = f"svc-bridge-crash-{time.monotonic_ns()}"
        self.bridge = None
        self._task = None

    async def start(self):
        client = bridge_client(self._client_id, tls_context(
            self._pki.ca.ca_file, self._pki.bridge_cert, self._pki.bridge_key))
        tracker = GapTracker(GapConfig(grace_s=1.0, retry_s=3.0, check_every_s=0.2))
        self.bridge = Bridge(client, self._core.store, self._core.registry,
                             BridgeConfig(batch_size=50),
                             resender=Resender(tracker, PgLedger(self._core.pool)))
        ready = asyncio.Event()
        self._task = asyncio.create_task(self.bridge.run(
            self._address.host, self._address.services_port, connect_properties(100), ready))
        await asyncio.wait_for(ready.wait(), 20)

    async def stop(self, *, end_session=False):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.bridge.close(end_session=end_session)


async def _stored(core, device_id):
    rows = await core.pool.fetch("SELECT seq, samples FROM ingested_messages"
                                 " WHERE device_id = $1 ORDER BY seq", device_id)
    return [r["seq"] for r in rows], sum(r["samples"] for r in rows)


@pytest.mark.parametrize("measuring_after", [True, False],
                         ids=["devices-go-on-measuring", "lost-messages-were-the-last"])
async def test_messages_lost_by_a_killed_broker_are_asked_for_and_stored_once(
        core, pki, own_broker, tmp_path, measuring_after):
    # When the lost messages were a device's last, no later number shows the gap: the
    # device's echo of its last acknowledged message on reconnecting does.
    address = _Address("localhost", own_broker.port, own_broker.services_port)
    bridge = _BridgeProcess(core, pki, address)
    await bridge.start()
    patient, _, _ = await new_patient(core, "crash")
    watches = [await new_watch(core, pki, address, tmp_path, patient) for _ in range(3)]
    stop = asyncio.Event()
    for watch in watches:
        watch.interval_s = 0.3
    running = [asyncio.create_task(w.run(stop)) for w in watches]

    async def flowing():
        counts = [len((await _stored(core, w.device_id))[0]) for w in watches]
        return min(counts) >= 3
    await wait_until(flowing, timeout=20)

    # The bridge goes away; the broker acknowledges the devices' messages and queues them in
    # the bridge's session, in memory (no autosave), and is then killed: they are gone.
    await bridge.stop()
    before = [w.ledger.messages for w in watches]

    async def queued():
        return all(w.ledger.messages >= b + 3 for w, b in zip(watches, before, strict=True))
    await wait_until(queued, timeout=20)
    if not measuring_after:
        stop.set()
        await asyncio.gather(*running)
    own_broker.kill()
    await asyncio.sleep(1.0)
    await own_broker.start()
    await bridge.start()
    if measuring_after:
        await asyncio.sleep(3.0)  # the devices come back with backoff, and go on measuring
        stop.set()
        await asyncio.gather(*running)
    serving_done = asyncio.Event()
    serving = [asyncio.create_task(w.serve(serving_done)) for w in watches]

    async def complete():
        for w in watches:
            seqs, _ = await _stored(core, w.device_id)
            if w.pending or seqs != list(range(1, w.next_seq)):
                return False
        return True
    try:
        await wait_until(complete, timeout=45)
    finally:
        serving_done.set()
        await asyncio.gather(*serving)
        await bridge.stop(end_session=True)
    for w in watches:
        seqs, samples = await _stored(core, w.device_id)
        assert seqs == list(range(1, w.next_seq))  # nothing lost, nothing twice
        assert samples == w.ledger.samples
        w.close()
    assert sum(w.ledger.resent for w in watches) >= 3  # the lost ones came back on request
    assert bridge.bridge.resender.tracker.stats.requests >= 1
