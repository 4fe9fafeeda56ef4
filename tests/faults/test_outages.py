"""Outages while devices publish: the database restarted, the bridge killed with SIGKILL.
After recovery every message the devices sent is stored exactly once, counted by device
sequence number (lost=0, duplicated=0). The bridge's /healthz shows the outage.

Each test has a server of its own where its fault would disturb the others: a PostgreSQL
cluster to stop; a Mosquitto for the killed bridge, whose persistent session stays in the
shared group and would take a share of every later test's messages.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.requests import ApiDeps
from api.tokens import TokenService
from broker_bridge import health
from broker_bridge.connection import connect_properties
from devices.ca import new_key
from healthiot.localservers import PostgresServer, free_port, stable_port
from healthiot.services import Core, new_bridge, open_core
from storage import roles
from storage.migrate import migrate
from tests.conftest import (
    BrokerAddress,
    Database,
    Pki,
    new_patient,
    new_watch,
    running_broker,
    wait_until,
)
from tests.faults.senders import SAMPLES_PER_MESSAGE, PersistentSender


async def ledger(core: Core) -> dict[str, list[int]]:
    """Stored sequence numbers per device, repeats included."""
    rows = await core.pool.fetch("SELECT device_id, seq FROM ingested_messages ORDER BY seq")
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["device_id"], []).append(row["seq"])
    return out


async def assert_exactly_once(core: Core, senders: list[PersistentSender], last: int) -> None:
    stored = await ledger(core)
    for sender in senders:
        assert stored.get(sender.watch.device_id) == list(range(1, last + 1))
    samples = await core.pool.fetchval("SELECT coalesce(sum(samples), 0) FROM segments")
    assert samples == len(senders) * last * SAMPLES_PER_MESSAGE  # no sample stored twice


async def all_stored(core: Core, count: int) -> bool:
    return bool(await core.pool.fetchval("SELECT count(*) FROM ingested_messages") >= count)


async def health_status(port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=3)) as resp:
        return resp.status


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/metrics") as resp:
        return await resp.text()


@pytest.fixture
async def own_postgres(workdir: Path) -> AsyncIterator[PostgresServer]:
    password = secrets.token_urlsafe(16)
    server = PostgresServer(workdir / f"pg-fault-{time.monotonic_ns()}", port=stable_port(),
                            user="healthiot", password=password,
                            log_file=workdir / "pg-fault.log",
                            bin_dir=os.environ.get("HEALTHIOT_PG_BIN_DIR"))
    await server.start()
    try:
        yield server
    finally:
        server.stop()


async def core_on(server: PostgresServer, directory: Path) -> Core:
    """The schema and the stores on ``server``; the caller closes the pool."""
    conn = await asyncpg.connect(server.dsn, password=server.password)
    try:
        await migrate(conn)
        await roles.set_password(conn, roles.SERVICE, server.password)
    finally:
        await conn.close()
    # As the services connect: the service role.
    service_dsn = server.dsn.replace(f"//{server.user}@", f"//{roles.SERVICE}@")
    return await open_core(service_dsn, server.password, directory / "kek.bin",
                           create_kek=True)


@pytest.fixture
async def own_broker(workdir: Path, pki: Pki) -> AsyncIterator[BrokerAddress]:
    async with running_broker(workdir, pki, f"mosquitto-fault-{time.monotonic_ns()}") as address:
        yield address


async def test_database_restart_loses_nothing_and_health_shows_the_outage(
        own_postgres: PostgresServer, pki: Pki, broker: BrokerAddress,
        tmp_path: Path) -> None:
    core = await core_on(own_postgres, tmp_path)
    patient, _, _ = await new_patient(core, "outage")
    senders = [PersistentSender(await new_watch(core, pki, broker, tmp_path, patient),
                                broker.host, broker.port) for _ in range(2)]
    bridge = new_bridge(core, client_id=f"svc-bridge-fault-db-{time.monotonic_ns()}",
                        ca_file=pki.ca.ca_file, cert=pki.bridge_cert, key=pki.bridge_key,
                        batch_size=50)
    ready = asyncio.Event()
    task = asyncio.create_task(bridge.run(broker.host, broker.services_port,
                                          connect_properties(100), ready))
    port = free_port()
    probes = await health.start(bridge, "127.0.0.1", port)
    try:
        await asyncio.wait_for(ready.wait(), 15)
        await asyncio.gather(*(s.send_all(1, 30) for s in senders))
        await wait_until(lambda: all_stored(core, 60))
        assert await health_status(port) == 200

        own_postgres.stop()  # the database goes away while devices keep publishing
        await asyncio.gather(*(s.send_all(31, 60) for s in senders))

        async def degraded() -> bool:
            return await health_status(port) == 503
        await wait_until(degraded)
        await asyncio.sleep(1)  # a few retries against the dead database
        await own_postgres.start()

        await wait_until(lambda: all_stored(core, 120), timeout=40)
        await assert_exactly_once(core, senders, 60)

        async def healthy() -> bool:
            return await health_status(port) == 200
        await wait_until(healthy)
        text = await metrics_text(port)
        assert "healthiot_bridge_messages_total 120.0\n" in text
        assert "healthiot_bridge_duplicates_total 0.0\n" in text
        assert 'healthiot_bridge_receive_to_commit_seconds_bucket{le="+Inf"}' in text
    finally:
        await probes.cleanup()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bridge.close(end_session=True)
        for sender in senders:
            await sender.close()
        await core.pool.close()


def _bridge_process(database: Database, broker: BrokerAddress, pki: Pki, kek: Path,
                    client_id: str, health_port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HEALTHIOT_DATABASE_URL=database.dsn,
               HEALTHIOT_DATABASE_PASSWORD=database.password,
               HEALTHIOT_KEK_FILE=str(kek), HEALTHIOT_OWNER_KEYS_DIR=str(kek.parent / "owner-keys"),
               HEALTHIOT_MQTT_HOST=broker.host,
               HEALTHIOT_MQTT_SERVICES_PORT=str(broker.services_port),
               HEALTHIOT_MQTT_CA_FILE=str(pki.ca.ca_file),
               HEALTHIOT_MQTT_CERT_FILE=str(pki.bridge_cert),
               HEALTHIOT_MQTT_KEY_FILE=str(pki.bridge_key),
               HEALTHIOT_BRIDGE_CLIENT_ID=client_id, HEALTHIOT_BRIDGE_BATCH_SIZE="50",
               HEALTHIOT_BRIDGE_HEALTH_PORT=str(health_port))
    return subprocess.Popen([sys.executable, "-m", "healthiot.cli", "bridge"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_bridge_killed_mid_stream_loses_nothing(core: Core, database: Database,
                                                      own_broker: BrokerAddress, pki: Pki,
                                                      tmp_path: Path) -> None:
    broker = own_broker
    patient, _, _ = await new_patient(core, "bridge-kill")
    senders = [PersistentSender(await new_watch(core, pki, broker, tmp_path, patient),
                                broker.host, broker.port) for _ in range(3)]
    client_id = f"svc-bridge-fault-kill-{time.monotonic_ns()}"
    port = free_port()
    processes = [_bridge_process(database, broker, pki, tmp_path / "kek.bin", client_id, port)]

    async def probes_answer() -> bool:
        try:
            return await health_status(port) == 200
        except aiohttp.ClientError:
            return False
    try:
        await wait_until(probes_answer, timeout=30)
        publishing = asyncio.gather(*(s.send_all(1, 150, pause_s=0.005) for s in senders))
        await wait_until(lambda: all_stored(core, 60))
        processes[0].send_signal(signal.SIGKILL)  # mid-stream: batches in hand, unacked
        processes[0].wait(10)
        stored_at_kill = await core.pool.fetchval("SELECT count(*) FROM ingested_messages")
        processes.append(_bridge_process(database, broker, pki, tmp_path / "kek.bin",
                                         client_id, port))
        await asyncio.wait_for(publishing, 60)
        await wait_until(lambda: all_stored(core, 450), timeout=60)
        await assert_exactly_once(core, senders, 150)
        assert stored_at_kill < 450  # the kill happened with work left to do
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(15)
        for sender in senders:
            await sender.close()


async def test_api_health_follows_the_database(own_postgres: PostgresServer,
                                               tmp_path: Path) -> None:
    core = await core_on(own_postgres, tmp_path)
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens))
    try:
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/healthz")).status == 200
            own_postgres.stop()
            resp = await client.get("/healthz")
            assert resp.status == 503 and (await resp.json())["database"] == "unreachable"
            await own_postgres.start()

            async def healthy() -> bool:
                return (await client.get("/healthz")).status == 200
            await wait_until(healthy)
    finally:
        await core.pool.close()
