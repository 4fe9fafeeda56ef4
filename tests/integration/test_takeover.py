"""Client-id takeover against the real Mosquitto. On the devices' listener it is prevented:
a device gets its own id whatever it asks for. Where an id can be chosen (the services'
listener, out of devices' reach in a deployment), a takeover is detected in the broker's
log, recorded and reported, and the device that was cut off loses nothing it sent."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt
import pytest

from aiopaho import AsyncClient
from broker_bridge.connection import tls_context
from devices.broker_config import REVOKER_IDENTITY
from devices.ca import key_pem, make_csr, new_key, write_private
from devices.sessions import SessionEnder
from devices.takeover import TakeoverStats, TakeoverStore, TakeoverWatcher
from firmware_sim.device import Watch
from healthiot.localservers import free_port
from healthiot.services import Core
from tests.conftest import (
    BrokerAddress,
    Database,
    Pki,
    in_background,
    mosquitto,
    new_patient,
    new_watch,
    start_mosquitto,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]

DETECTION_DEADLINE_S = 5.0


@pytest.fixture
async def watcher(core: Core, broker: BrokerAddress) -> AsyncIterator[TakeoverWatcher]:
    running = TakeoverWatcher(broker.server.log_file, TakeoverStore(core.pool),
                              stats=TakeoverStats(), poll_interval_s=0.1)
    caught_up = asyncio.Event()
    async with in_background(running.run(caught_up), "the takeover watcher", caught_up):
        yield running


async def _as(device: Watch, client_id: str, broker: BrokerAddress,
              port: int | None = None) -> AsyncClient:
    """``device``'s own certificate, connecting under ``client_id`` (to the devices'
    listener unless ``port`` names another)."""
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                     protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(tls_context(device.broker.ca_file, device.flash.cert_file,
                                            device.flash.key_file))
    await client.connect(broker.host, port or broker.port, timeout=5)
    return client


async def test_a_device_under_another_devices_client_id_is_recorded_and_the_victim_loses_nothing(
        core: Core, pki: Pki, broker: BrokerAddress, bridge: object,
        watcher: TakeoverWatcher, tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="devices.takeover")
    patient, _, _ = await new_patient(core, "takeover.victim")
    victim = await new_watch(core, pki, broker, tmp_path, patient)
    intruder = await new_watch(core, pki, broker, tmp_path, patient)
    stop = asyncio.Event()
    running = asyncio.create_task(victim.run(stop), name="victim")

    async def victim_sending() -> bool:
        return victim.online and victim.ledger.messages >= 2
    await wait_until(victim_sending)
    sent_before = victim.ledger.messages
    # The session broker's log is shared: earlier tests' takeovers are counted at catch-up.
    counted_before = watcher.stats.takeovers

    started = time.monotonic()
    intrusion = await _as(intruder, victim.device_id, broker, broker.services_port)
    store = TakeoverStore(core.pool)

    async def recorded() -> bool:
        return bool(await store.involving(victim.device_id))
    await wait_until(recorded, timeout=DETECTION_DEADLINE_S)
    detected_s = time.monotonic() - started
    (event,) = await store.involving(victim.device_id)
    assert (event.client_id, event.identity, event.live_session_closed) == (
        victim.device_id, intruder.device_id, True)
    assert watcher.stats.takeovers - counted_before == 1
    warnings = [r for r in caplog.records if r.getMessage() == "client id taken over"]
    assert [(r.levelno, r.client_id, r.identity) for r in warnings] == [  # type: ignore[attr-defined]
        (logging.WARNING, victim.device_id, intruder.device_id)]

    # The victim reconnects by itself, which closes the intruder's connection in turn...
    await asyncio.wait_for(intrusion.disconnected.wait(), 15)

    async def victim_back() -> bool:
        return victim.online and victim.ledger.messages >= sent_before + 2
    await wait_until(victim_back)
    stop.set()
    await running
    await victim.flush(10)
    assert victim.pending == 0

    # ... and everything it measured is stored, every sequence number once.
    async def all_stored() -> bool:
        stored = await core.store.count_stored([victim.device_id])
        return stored[1] + stored[2] == victim.ledger.samples
    await wait_until(all_stored)
    seqs = [r["seq"] for r in await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq",
        victim.device_id)]
    assert seqs == list(range(1, victim.ledger.messages + 1))
    # Reconnections under one's own id are not takeovers: still the one event.
    assert len(await store.involving(victim.device_id)) == 1
    print(f"\ntakeover recorded {detected_s * 1000:.0f} ms after the intruder connected; "
          f"victim sent {victim.ledger.messages} messages, {len(seqs)} stored, none lost")


def _daemon(database: Database, var: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``healthiot devices ...`` as a long-running operator process."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHIOT_")}
    environ.update({"HEALTHIOT_DATABASE_URL": database.dsn,
                    "HEALTHIOT_DATABASE_PASSWORD": database.password,
                    "HEALTHIOT_VAR_DIR": str(var), **env})
    return subprocess.Popen([sys.executable, "-m", "healthiot.cli", "devices", *args],
                            cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(process.communicate, timeout=30)
    return process.returncode, err


async def test_the_watch_takeovers_command_records_and_serves_the_counter(
        core: Core, database: Database, tmp_path: Path) -> None:
    log_file = tmp_path / "mosquitto.log"
    log_file.write_text("2026-12-02T18:09:04+0000: mosquitto version 2.0.11 starting\n")
    port = free_port()
    process = _daemon(database, tmp_path / "var", "watch-takeovers", "--log-file",
                      str(log_file), "--metrics-port", str(port))
    try:
        with log_file.open("a") as f:
            f.write("2026-12-02T18:09:05+0000: Client watch-aaaaaaaaaaaa already connected, "
                    "closing old connection.\n2026-12-02T18:09:05+0000: New client connected "
                    "from 10.0.0.7:50412 as watch-aaaaaaaaaaaa (p5, c1, k30, "
                    "u'watch-bbbbbbbbbbbb').\n")
        store = TakeoverStore(core.pool)

        async def recorded() -> bool:
            return bool(await store.involving("watch-aaaaaaaaaaaa"))
        await wait_until(recorded)
        (event,) = await store.involving("watch-bbbbbbbbbbbb")
        assert (event.identity, event.live_session_closed) == ("watch-bbbbbbbbbbbb", True)
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert "healthiot_broker_client_id_takeovers_total 1\n" in await response.text()
    finally:
        code, err = await _stop(process)
    assert code == 0, err
    assert "client id taken over" in err and "watch-bbbbbbbbbbbb" in err


async def test_a_broker_writing_its_own_log_file_is_watched_the_same_way(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    """The deployment's shape: ``log_dest file`` (healthiot broker-config --log-file)."""
    server = mosquitto(workdir, pki, "mosquitto-own-log", own_log_file=True)
    await start_mosquitto(server)
    try:
        assert server.own_log_file is not None
        assert f"log_dest file {server.own_log_file}" in server.config_file.read_text()
        address = BrokerAddress("localhost", server.port, server)
        patient, _, _ = await new_patient(core, "takeover.ownlog")
        victim = await new_watch(core, pki, address, tmp_path, patient)
        intruder = await new_watch(core, pki, address, tmp_path, patient)
        watcher = TakeoverWatcher(server.own_log_file, TakeoverStore(core.pool),
                                  poll_interval_s=0.1)
        task = asyncio.create_task(watcher.run(), name="own-log-watcher")
        try:
            own = await _as(victim, victim.device_id, address)
            other = await _as(intruder, victim.device_id, address, server.services_port)
            store = TakeoverStore(core.pool)

            async def recorded() -> bool:
                return bool(await store.involving(intruder.device_id))
            await wait_until(recorded, timeout=DETECTION_DEADLINE_S)
            (event,) = await store.involving(victim.device_id)
            assert event.live_session_closed and event.identity == intruder.device_id
            await own.disconnect()
            await other.disconnect()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        server.stop()


async def test_on_the_devices_listener_a_device_cannot_take_another_devices_client_id(
        core: Core, pki: Pki, workdir: Path, tmp_path: Path) -> None:
    server = mosquitto(workdir, pki, "mosquitto-bound-ids")
    await start_mosquitto(server)
    try:
        assert "use_username_as_clientid true" in server.config_file.read_text()
        devices = BrokerAddress("localhost", server.port, server)
        patient, _, _ = await new_patient(core, "takeover.prevented")
        victim = await new_watch(core, pki, devices, tmp_path, patient)
        intruder = await new_watch(core, pki, devices, tmp_path, patient)
        own = await _as(victim, victim.device_id, devices)
        other = await _as(intruder, victim.device_id, devices)  # given its own id instead
        await asyncio.sleep(0.5)
        assert own.is_connected and other.is_connected
        log = server.log_file.read_text()
        assert f"as {intruder.device_id} (p5, c1, k60, u'{intruder.device_id}')" in log
        assert "already connected" not in log
        # The revoker ends every session of the identity it names, and only those.
        context = tls_context(pki.ca.ca_file, *_revoker_files(pki, tmp_path))
        await SessionEnder("localhost", server.services_port, context)(intruder.device_id)
        await asyncio.wait_for(other.disconnected.wait(), 5)
        assert own.is_connected  # only the named identity's sessions end
        await own.disconnect()
    finally:
        server.stop()


def _revoker_files(pki: Pki, directory: Path) -> tuple[Path, Path]:
    key = new_key()
    write_private(directory / "revoker.key", key_pem(key))
    (directory / "revoker.pem").write_bytes(
        pki.ca.issue_client(make_csr(key, REVOKER_IDENTITY), service=True))
    return directory / "revoker.pem", directory / "revoker.key"
