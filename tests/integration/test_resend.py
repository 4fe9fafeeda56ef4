"""Nothing a device measured is lost: its durable outbox across a restart, and the resend
protocol when the backend finds a gap. Real Mosquitto (mTLS) and real PostgreSQL."""

import asyncio
import time

from firmware_sim.device import Broker, Watch
from healthiot.localservers import free_port
from tests.conftest import new_patient, new_watch, wait_until


async def _stored_seqs(core, device_id):
    rows = await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq", device_id)
    return [r["seq"] for r in rows]


def _measure(watch, n):
    now = time.time()
    for i in range(n):
        watch.measure(now - 5 * (n - i) - 5, now - 5 * (n - i))  # 5 s of 1 Hz each


async def test_messages_queued_while_offline_survive_a_restart_and_are_stored_once(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "offline")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    nowhere = Broker("localhost", free_port(), pki.ca.ca_file)  # nothing listens there
    offline = Watch(watch.device_id, watch.flash, nowhere, interval_s=1.0)
    watch.close()
    _measure(offline, 6)
    sender = asyncio.create_task(offline._deliver_forever())
    await asyncio.sleep(1.5)  # a few refused connections, with backoff
    assert not offline.online and offline.ledger.messages == 0 and offline.pending == 6
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    offline.close()  # the simulator stops; only the flash directory remains

    restarted = Watch(watch.device_id, watch.flash, watch.broker, interval_s=1.0)
    assert restarted.pending == 6 and restarted.next_seq == 7
    _measure(restarted, 1)  # and it goes on numbering after the old messages
    await restarted.flush(timeout=20)
    assert restarted.pending == 0 and restarted.ledger.messages == 7

    async def all_stored():
        return len(await _stored_seqs(core, watch.device_id)) == 7
    await wait_until(all_stored)
    assert await _stored_seqs(core, watch.device_id) == [1, 2, 3, 4, 5, 6, 7]
    samples = await core.pool.fetchval(
        "SELECT sum(samples) FROM ingested_messages WHERE device_id = $1", watch.device_id)
    assert samples == restarted.ledger.samples
    restarted.close()


async def test_a_restart_after_delivery_sends_nothing_twice(core, pki, broker, bridge,
                                                            tmp_path):
    patient, _, _ = await new_patient(core, "twice")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    _measure(watch, 3)
    await watch.flush(timeout=20)
    watch.close()
    again = Watch(watch.device_id, watch.flash, watch.broker, interval_s=1.0)
    assert again.pending == 0
    await again.flush(timeout=5)
    assert again.ledger.sent == 0
    _measure(again, 1)
    await again.flush(timeout=20)

    async def four():
        return len(await _stored_seqs(core, watch.device_id)) == 4
    await wait_until(four)
    assert await _stored_seqs(core, watch.device_id) == [1, 2, 3, 4]
    again.close()
