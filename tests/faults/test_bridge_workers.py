"""``healthiot bridge --workers 2`` under load: one worker killed with SIGKILL mid-stream is
started again by the supervisor, and every reading is stored exactly once; the supervisor
killed with SIGKILL leaves no worker behind. Real processes, a Mosquitto of its own (the
workers' persistent sessions stay in its shared group), the test's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from healthiot.localservers import free_port
from healthiot.services import Core
from tests.conftest import (
    BrokerAddress,
    Database,
    Pki,
    mosquitto,
    new_patient,
    new_watch,
    start_mosquitto,
    wait_until,
)
from tests.faults.senders import PersistentSender
from tests.faults.test_outages import all_stored, assert_exactly_once, health_status

MESSAGES = 150  # per device


def _two_free_ports() -> int:
    """A port p with p + 1 free too: worker i's probes listen on p + i."""
    while True:
        port = free_port()
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port + 1))
            return port


def _supervisor(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "healthiot.cli", "bridge", "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):  # a zombie awaiting its reaper is gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


async def test_two_workers_one_killed_under_load_every_reading_stored_once(
        core: Core, database: Database, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    server = mosquitto(workdir, pki, f"mosquitto-workers-{time.monotonic_ns()}")
    await start_mosquitto(server)
    broker = BrokerAddress("localhost", server.port, server)
    port = _two_free_ports()
    kek = tmp_path / "kek.bin"
    env = dict(os.environ, HEALTHIOT_DATABASE_URL=database.dsn,
               HEALTHIOT_DATABASE_PASSWORD=database.password,
               HEALTHIOT_KEK_FILE=str(kek), HEALTHIOT_OWNER_KEYS_DIR=str(tmp_path / "owner-keys"),
               HEALTHIOT_MQTT_HOST=broker.host,
               HEALTHIOT_MQTT_SERVICES_PORT=str(broker.services_port),
               HEALTHIOT_MQTT_CA_FILE=str(pki.ca.ca_file),
               HEALTHIOT_MQTT_CERT_FILE=str(pki.bridge_cert),
               HEALTHIOT_MQTT_KEY_FILE=str(pki.bridge_key),
               HEALTHIOT_BRIDGE_CLIENT_ID=f"svc-bridge-workers-{time.monotonic_ns()}",
               HEALTHIOT_BRIDGE_BATCH_SIZE="50", HEALTHIOT_BRIDGE_HEALTH_PORT=str(port))
    supervisor = _supervisor(env)
    patient, _, _ = await new_patient(core, "two-workers")
    senders = [PersistentSender(await new_watch(core, pki, broker, tmp_path, patient),
                                broker.host, broker.port) for _ in range(3)]

    async def both_answer() -> bool:
        try:
            return all([await health_status(port + i) == 200 for i in (0, 1)])
        except aiohttp.ClientError:
            return False
    workers: list[int] = []
    try:
        await wait_until(both_answer, timeout=40)
        workers = _children(supervisor.pid)
        assert len(workers) == 2, workers
        publishing = asyncio.gather(*(s.send_all(1, MESSAGES, pause_s=0.005)
                                      for s in senders))
        await wait_until(lambda: all_stored(core, 60), timeout=30)
        victim = workers[1]
        os.kill(victim, signal.SIGKILL)  # mid-stream: batches in hand, unacked
        stored_at_kill = await core.pool.fetchval("SELECT count(*) FROM ingested_messages")

        async def replaced() -> bool:
            now = _children(supervisor.pid)
            return len(now) == 2 and victim not in now and await both_answer()
        await wait_until(replaced, timeout=40)
        await asyncio.wait_for(publishing, 90)
        await wait_until(lambda: all_stored(core, 3 * MESSAGES), timeout=60)
        await assert_exactly_once(core, senders, MESSAGES)
        assert stored_at_kill < 3 * MESSAGES  # the kill happened with work left to do
        assert supervisor.poll() is None

        workers = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGKILL)  # no clean-up: the workers notice alone
        supervisor.wait(10)

        async def none_left() -> bool:
            return not any(_alive(pid) for pid in workers)
        await wait_until(none_left, timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.terminate()
            supervisor.wait(40)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sender in senders:
            await sender.close()
        server.stop()
