"""The broker's transport rules, tested against the generated Mosquitto configuration."""

import datetime as dt
import ssl

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from aiopaho import AsyncClient, MqttError
from devices.ca import CertificateAuthority, key_pem, make_csr, new_key, write_private
from devices.identity import new_device_id
from tests.conftest import new_patient, new_watch, wait_until
from tests.integration.test_bridge import _connected_device, _heart_rate, _props


async def _connect(broker, context, client_id="x"):
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                     protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(context)
    await client.connect(broker.host, broker.port, timeout=5)
    return client


def _context(pki, cert=None, key=None):
    context = ssl.create_default_context(cafile=str(pki.ca.ca_file))
    if cert:
        context.load_cert_chain(str(cert), str(key))
    return context


async def test_a_client_without_certificate_is_refused(broker, pki):
    with pytest.raises(MqttError):
        await _connect(broker, _context(pki))


async def test_a_certificate_from_another_ca_is_refused(broker, pki, tmp_path):
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
    key = new_key()
    write_private(tmp_path / "d.key", key_pem(key))
    device_id = new_device_id("watch")
    (tmp_path / "d.pem").write_bytes(rogue.issue_client(make_csr(key, device_id)))
    with pytest.raises(MqttError):
        await _connect(broker, _context(pki, tmp_path / "d.pem", tmp_path / "d.key"), device_id)


async def test_cbc_suites_and_old_tls_are_refused(broker, pki):
    cbc = _context(pki, pki.bridge_cert, pki.bridge_key)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(MqttError):
        await _connect(broker, cbc, "svc-bridge-cbc")
    aead = _context(pki, pki.bridge_cert, pki.bridge_key)
    aead.maximum_version = ssl.TLSVersion.TLSv1_2
    client = await _connect(broker, aead, "svc-bridge-aead")  # the same identity, AEAD: fine
    await client.disconnect()


async def test_a_device_cannot_publish_as_another_device(core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "victim")
    victim = await new_watch(core, pki, broker, tmp_path, patient)
    attacker = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _connected_device(attacker, broker)
    await client.publish(f"devices/{victim.device_id}/telemetry", _heart_rate(),
                         properties=_props(1))
    await client.publish(f"devices/{attacker.device_id}/telemetry", _heart_rate(),
                         properties=_props(1))  # the sync point: its own topic works

    async def own_stored():
        return await core.pool.fetchval(
            "SELECT count(*) FROM ingested_messages WHERE device_id = $1",
            attacker.device_id) == 1
    await wait_until(own_stored)
    assert await core.pool.fetchval(
        "SELECT count(*) FROM ingested_messages WHERE device_id = $1", victim.device_id) == 0
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 0  # never reached us
    await client.disconnect()


def _device_files(pki, tmp_path, device_id, **issue):
    """A device key and a certificate from the real device CA, issued with ``issue``."""
    key = new_key()
    write_private(tmp_path / f"{device_id}.key", key_pem(key))
    (tmp_path / f"{device_id}.pem").write_bytes(
        pki.ca.issue_client(make_csr(key, device_id), **issue))
    return tmp_path / f"{device_id}.pem", tmp_path / f"{device_id}.key"


async def test_an_expired_certificate_is_refused(broker, pki, tmp_path):
    device_id = new_device_id("watch")
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    cert, key = _device_files(pki, tmp_path, device_id, now=issued,
                              validity=dt.timedelta(days=365))
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < \
        dt.datetime.now(dt.UTC)
    with pytest.raises(MqttError):
        await _connect(broker, _context(pki, cert, key), device_id)
    # The same CA, CN and profile, in date: accepted, so the refusal above is the date's.
    fresh, fresh_key = _device_files(pki, tmp_path, new_device_id("watch"))
    client = await _connect(broker, _context(pki, fresh, fresh_key), fresh.stem)
    await client.disconnect()


async def test_a_certificate_not_yet_valid_is_refused(broker, pki, tmp_path):
    device_id = new_device_id("watch")
    cert, key = _device_files(pki, tmp_path, device_id,
                              now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_before_utc > \
        dt.datetime.now(dt.UTC)
    with pytest.raises(MqttError):
        await _connect(broker, _context(pki, cert, key), device_id)
