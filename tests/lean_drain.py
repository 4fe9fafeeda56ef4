"""Draining a backlog: paho's AsyncClient against LeanClient, on one broker, same backlog.

For each client in turn (twice, alternating): a persistent session on the shared telemetry
subscription is opened and left, 20 devices queue 20,000 QoS 1 messages for it (60 samples
of SenML JSON each, bench/bench_ingest.py's publisher), then the client connects and drains
them, acking in batches of 500 with ack_many. Timed from the first message to the last; the
process's CPU time over the same span is shown too (the machine may be shared).

Run: ``.venv/bin/python -m tests.lean_drain`` (it starts its own Mosquitto).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient, LeanClient
from bench.bench_ingest import BATCH, DEVICES, open_session, publish, published
from broker_bridge.connection import connect_properties, make_client, tls_context
from devices.broker_config import BRIDGE_IDENTITY, SHARED_TELEMETRY
from devices.ca import CertificateAuthority, key_pem, make_csr, new_key, write_private
from devices.identity import new_device_id
from healthiot.stack import SERVER_NAMES
from tests.conftest import Pki, mosquitto, start_mosquitto

BACKLOG = 20_000


def make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority.load_or_create(directory)
    key_bytes, cert_bytes = ca.issue_server(SERVER_NAMES)
    write_private(directory / "server.key", key_bytes)
    (directory / "server.pem").write_bytes(cert_bytes)
    key = new_key()
    write_private(directory / "bridge.key", key_pem(key))
    (directory / "bridge.pem").write_bytes(
        ca.issue_client(make_csr(key, BRIDGE_IDENTITY), service=True))
    return Pki(ca, directory, directory / "bridge.pem", directory / "bridge.key",
               directory / "server.pem", directory / "server.key")


async def drain(client: AsyncClient | LeanClient, port: int) -> tuple[float, float]:
    """(seconds, CPU seconds) from the first message to the last of BACKLOG."""
    await client.connect("localhost", port, clean_start=False,
                         properties=connect_properties(2 * BATCH))
    await client.subscribe(SHARED_TELEMETRY, qos=1)
    queue = client.messages
    received = 0
    first = cpu = 0.0
    while received < BACKLOG:
        batch = [await asyncio.wait_for(queue.get(), 60)]
        if received == 0:
            first, cpu = time.perf_counter(), time.process_time()
        while len(batch) < BATCH and not queue.empty():
            batch.append(queue.get_nowait())
        client.ack_many(batch)  # type: ignore[arg-type]
        received += len(batch)
    seconds, cpu_seconds = time.perf_counter() - first, time.process_time() - cpu
    end = Properties(PacketTypes.DISCONNECT)
    end.SessionExpiryInterval = 0
    await client.disconnect(properties=end)
    return seconds, cpu_seconds


async def main(workdir: Path) -> None:
    pki = make_pki(workdir / "pki")
    server = mosquitto(workdir, pki, "mosquitto")
    await start_mosquitto(server)
    try:
        devices = []
        for _ in range(DEVICES):
            device_id, key = new_device_id("watch"), new_key()
            key_file, cert_file = workdir / f"{device_id}.key", workdir / f"{device_id}.pem"
            write_private(key_file, key_pem(key))
            cert_file.write_bytes(pki.ca.issue_client(make_csr(key, device_id)))
            devices.append((device_id, str(cert_file), str(key_file)))
        context = tls_context(pki.ca.ca_file, pki.bridge_cert, pki.bridge_key)
        first_seq = 1
        for round_ in range(2):
            for kind in ("paho", "lean"):
                client_id = f"svc-bridge-drain-{kind}-{round_}"
                await asyncio.to_thread(open_session, client_id, context, server.services_port)
                await asyncio.to_thread(published, publish(
                    devices, pki.ca.ca_file, server.port, first_seq, BACKLOG // DEVICES))
                first_seq += BACKLOG // DEVICES
                client: AsyncClient | LeanClient = (
                    AsyncClient(make_client(client_id, context), queue_size=4 * BATCH)
                    if kind == "paho" else LeanClient(client_id, context,
                                                      queue_size=4 * BATCH))
                seconds, cpu = await drain(client, server.services_port)
                print(f"{kind}: {BACKLOG / seconds:,.0f} msg/s ({seconds:.2f} s, CPU "
                      f"{cpu:.2f} s = {cpu / BACKLOG * 1e6:.0f} us/msg)", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="healthiot-lean-drain-") as tmp:
        Path(tmp).chmod(0o755)  # the mosquitto user must traverse it as root
        os.chdir(Path(__file__).resolve().parent.parent)
        sys.exit(asyncio.run(main(Path(tmp))))
