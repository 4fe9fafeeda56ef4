"""Certificate renewal over MQTT against the real Mosquitto (with its CRL), the real bridge
and PostgreSQL: a device renews while it publishes, switches at its next connection, its
old certificate is then revoked, and no reading is lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from aiopaho import AsyncClient, MqttError
from broker_bridge.bridge import Bridge
from broker_bridge.connection import tls_context
from devices.broker_config import RENEWER_IDENTITY
from devices.ca import key_pem, make_csr, new_key, write_private
from devices.errors import RenewalRefused
from devices.identity import new_device_id
from devices.renewal import CertificateRenewer, RenewalService
from devices.revocation import CrlPublisher
from firmware_sim.device import Watch
from firmware_sim.renewal import renew
from healthiot.localservers import MosquittoServer
from healthiot.services import Core
from storage.maintenance import Maintenance, RetentionPolicy
from storage.rollups import Rollups
from tests.conftest import BrokerAddress, Database, Pki, new_patient, new_watch, wait_until
from tests.integration.test_device_revocation import (  # noqa: F401 (fixtures)
    _ender,
    crl_bridge,
    crl_broker,
)
from tests.integration.test_takeover import _daemon, _stop


@pytest.fixture
async def renewer(core: Core, pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
                  tmp_path: Path) -> AsyncIterator[RenewalService]:
    """The renewal service with its own identity: it made its key, the CA signed its CSR."""
    key = new_key()
    write_private(tmp_path / "renewer.key", key_pem(key))
    (tmp_path / "renewer.pem").write_bytes(
        pki.ca.issue_client(make_csr(key, RENEWER_IDENTITY), service=True))
    service = RenewalService(CertificateRenewer(core.registry, pki.ca, core.pool),
                             "localhost", crl_broker.services_port,
                             tls_context(pki.ca.ca_file, tmp_path / "renewer.pem",
                                         tmp_path / "renewer.key"))
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(ready), name="renewer")
    await asyncio.wait_for(ready.wait(), 15)
    try:
        yield service
    finally:
        crashed = task.done() and not task.cancelled() and task.exception()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if crashed:
        raise AssertionError("the renewer crashed during the test") from crashed


def _serial(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


async def _connect_with(pki: Pki, cert: Path, key: Path, client_id: str,
                        port: int) -> AsyncClient:
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                     protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(tls_context(pki.ca.ca_file, cert, key))
    await client.connect("localhost", port, timeout=5)
    return client


async def _nothing_lost(core: Core, device: Watch) -> None:
    async def all_stored() -> bool:
        stored = await core.store.count_stored([device.device_id])
        return stored[1] + stored[2] == device.ledger.samples
    await wait_until(all_stored)
    seqs = [r["seq"] for r in await core.pool.fetch(
        "SELECT seq FROM ingested_messages WHERE device_id = $1 ORDER BY seq",
        device.device_id)]
    assert seqs == list(range(1, device.ledger.messages + 1))


async def test_a_device_renews_under_load_switches_loses_nothing_and_the_old_cert_is_revoked(
        core: Core, pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
        crl_bridge: Bridge, renewer: RenewalService, tmp_path: Path) -> None:  # noqa: F811
    patient, _, _ = await new_patient(core, "renewal.owner")
    address = BrokerAddress("localhost", crl_broker.port, crl_broker)
    fleet = [await new_watch(core, pki, address, tmp_path, patient) for _ in range(4)]
    for watch in fleet:
        watch.interval_s = 0.2  # 5 messages a second each, while one of them renews
    device = fleet[0]
    old_pem = device.flash.cert_file.read_bytes()
    old_cert, old_key = tmp_path / "old.pem", tmp_path / "old.key"
    shutil.copy(device.flash.cert_file, old_cert)
    shutil.copy(device.flash.key_file, old_key)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop), name=f"watch-{i}") for i, w in enumerate(fleet)]

    async def sending(n: int) -> bool:
        return device.online and device.ledger.messages >= n
    await wait_until(lambda: sending(3))

    started = time.monotonic()
    new_pem = await device.renew_certificate()  # over its one session, while it sends
    renewal_s = time.monotonic() - started
    assert device.flash.cert_file.read_bytes() == new_pem
    history = await core.registry.certificates(device.device_id)
    assert [c.serial for c in history] == [_serial(old_pem), _serial(new_pem)]
    assert all(c.revoked_at is None for c in history)
    assert await core.pool.fetchval("SELECT cert_serial FROM devices WHERE id = $1",
                                    device.device_id) == _serial(new_pem)
    assert renewer.answered == 1
    sent = device.ledger.messages
    await wait_until(lambda: sending(sent + 3))  # its session (old certificate) went on

    # The old certificate alone is revoked: CRL, then its live session is ended.
    assert await core.registry.revoke_certificate(device.device_id, _serial(old_pem))
    await CrlPublisher(core.registry, pki.ca, crl_broker.crl_file, crl_broker.reload).publish()
    await _ender(pki, crl_broker.services_port, tmp_path)(device.device_id)
    sent = device.ledger.messages
    await wait_until(lambda: sending(sent + 3))  # back, necessarily with the new certificate
    with pytest.raises(MqttError):
        await _connect_with(pki, old_cert, old_key, f"{device.device_id}.probe",
                            crl_broker.port)
    assert (await core.registry.get(device.device_id)).state == "paired"

    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.gather(*(w.flush(10) for w in fleet))
    for watch in fleet:
        assert watch.pending == 0
        await _nothing_lost(core, watch)
    print(f"\nrenewal round trip {renewal_s * 1000:.0f} ms under {len(fleet)} watches at "
          f"5 msg/s; {device.ledger.messages} messages from the renewing watch, none lost")


async def test_a_repeated_csr_gets_the_same_certificate_and_refusals_say_why(
        core: Core, pki: Pki, tmp_path: Path) -> None:
    patient, _, _ = await new_patient(core, "renewal.rules")
    address = BrokerAddress("localhost", 1, None)  # type: ignore[arg-type] (no broker here)
    device = await new_watch(core, pki, address, tmp_path, patient)
    renewer = CertificateRenewer(core.registry, pki.ca, core.pool, per_day=2)
    key = new_key()
    csr = make_csr(key, device.device_id)
    first = await renewer.renew(device.device_id, csr)
    assert await renewer.renew(device.device_id, csr) == first  # a lost answer, asked again
    assert len(await core.registry.certificates(device.device_id)) == 2

    async def refused(device_id: str, csr_pem: bytes) -> str:
        with pytest.raises(RenewalRefused) as caught:
            await renewer.renew(device_id, csr_pem)
        return caught.value.reason

    other = await new_watch(core, pki, address, tmp_path, patient)
    assert await refused(device.device_id, make_csr(new_key(), other.device_id)) == "bad_csr"
    assert await refused(device.device_id, b"not a csr") == "bad_csr"
    await renewer.renew(device.device_id, make_csr(new_key(), device.device_id))
    assert await refused(device.device_id,
                         make_csr(new_key(), device.device_id)) == "too_many_renewals"
    waiting = await new_watch(core, pki, address, tmp_path, None)
    waiting_id = waiting.device_id
    assert await refused(waiting_id, make_csr(new_key(), waiting_id)) == "not_paired"
    await core.registry.revoke(other.device_id)
    assert await refused(other.device_id, make_csr(new_key(), other.device_id)) == "not_paired"
    assert await refused(new_device_id("watch"), make_csr(new_key(), "x")) == "bad_csr"


async def test_retention_removes_answers_of_expired_certificates_and_old_takeovers(
        core: Core, pki: Pki, tmp_path: Path) -> None:
    """A renewal's stored answer serves a device that asks again with the same CSR: useless
    once the certificate it holds has expired, so it goes then. A takeover is a security
    record, kept as long as the audit log."""
    patient, _, _ = await new_patient(core, "renewal.retention")
    address = BrokerAddress("localhost", 1, None)  # type: ignore[arg-type] (no broker here)
    device = await new_watch(core, pki, address, tmp_path, patient)
    renewer = CertificateRenewer(core.registry, pki.ca, core.pool)
    old, current = [x509.load_pem_x509_certificate(await renewer.renew(
        device.device_id, make_csr(new_key(), device.device_id))) for _ in range(2)]
    await core.pool.execute(
        "UPDATE device_certificates SET expires_at = now() - interval '1 day' WHERE serial = $1",
        format(old.serial_number, "x"))
    now = dt.datetime.now(dt.UTC)
    policy = RetentionPolicy(audit_days=400)
    for days in (401, 399):
        await core.pool.execute(
            "INSERT INTO client_id_takeovers (at, client_id, identity, peer, live_session_closed)"
            " VALUES ($1, $2, $2, '192.0.2.1:5000', true)",
            now - dt.timedelta(days=days), device.device_id)
    removed = await Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring,
                                                               core.store),
                                core.audit, policy).enforce_retention(now)
    assert (removed["renewals"], removed["takeovers"]) == (1, 1)
    assert await core.pool.fetchval("SELECT serial FROM certificate_renewals") == format(
        current.serial_number, "x")
    assert await core.pool.fetchval(
        "SELECT now() - at < interval '400 days' FROM client_id_takeovers")


async def test_a_device_cannot_ask_for_another_devices_certificate(
        core: Core, pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
        renewer: RenewalService, tmp_path: Path) -> None:
    patient, _, _ = await new_patient(core, "renewal.thief")
    address = BrokerAddress("localhost", crl_broker.port, crl_broker)
    victim = await new_watch(core, pki, address, tmp_path, patient)
    thief = await new_watch(core, pki, address, tmp_path, patient)
    # The thief's own certificate, the victim's id as CN and topic: the broker refuses it
    # the victim's inbox at SUBSCRIBE, and the ACL keeps a CSR from the renewer, so no
    # certificate is issued and none comes back.
    with pytest.raises(MqttError, match="Not authorized"):
        await renew(thief.flash, victim.device_id, thief.broker, answer_timeout_s=1.5,
                    attempts=1)
    assert len(await core.registry.certificates(victim.device_id)) == 1
    assert renewer.answered == 0 and renewer.refused == 0


async def test_the_renewer_command_answers_a_device(
        core: Core, database: Database, pki: Pki, broker: BrokerAddress,
        tmp_path: Path) -> None:
    key = new_key()
    write_private(tmp_path / "renewer.key", key_pem(key))
    (tmp_path / "renewer.pem").write_bytes(
        pki.ca.issue_client(make_csr(key, RENEWER_IDENTITY), service=True))
    patient, _, _ = await new_patient(core, "renewal.cli")
    device = await new_watch(core, pki, broker, tmp_path, patient)
    process = _daemon(database, tmp_path / "var", "renewer", "--pki", str(pki.directory),
                      "--cert", str(tmp_path / "renewer.pem"),
                      "--key", str(tmp_path / "renewer.key"),
                      HEALTHIOT_MQTT_HOST="localhost",
                      HEALTHIOT_MQTT_SERVICES_PORT=str(broker.services_port),
                      HEALTHIOT_MQTT_CA_FILE=str(pki.ca.ca_file))
    try:
        # Asked again until the process has subscribed (a CSR before that reaches no one).
        new_pem = await renew(device.flash, device.device_id, device.broker,
                              answer_timeout_s=1.0, attempts=30)
    finally:
        code, err = await _stop(process)
    assert code == 0, err
    assert [c.serial for c in await core.registry.certificates(device.device_id)][-1] == \
        _serial(new_pem)
