"""``healthiot devices provision | revoke | crl`` as an operator runs them: a subprocess
against the test database and the test CA."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from devices.ca import key_pem, make_csr, new_key, write_private
from devices.identity import new_device_id
from healthiot.services import Core
from tests.conftest import Database, Pki, new_patient

ROOT = Path(__file__).resolve().parents[2]


async def healthiot(database: Database, var: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHIOT_")}
    env.update({"HEALTHIOT_DATABASE_URL": database.dsn,
                "HEALTHIOT_DATABASE_PASSWORD": database.password,
                "HEALTHIOT_VAR_DIR": str(var), "HEALTHIOT_MQTT_HOST": "mqtt.example"})
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "healthiot.cli", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False)


async def test_provision_from_the_device_csr_then_revoke(core: Core, database: Database,
                                                         pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "factory" / "W-9000"
    out.mkdir(parents=True)
    device_key = new_key()  # the device's; it stays in the device's own storage
    write_private(tmp_path / "device-flash.key", key_pem(device_key))
    device_id = new_device_id("watch")
    (out / "device.csr").write_bytes(make_csr(device_key, device_id))

    done = await healthiot(database, tmp_path / "var", "devices", "provision", "--model",
                           "watch", "--serial", "W-9000", "--out", str(out), "--pki",
                           str(pki.directory), "--firmware", "1.2.0")
    assert done.returncode == 0, done.stderr
    enrolment = json.loads((out / "enrolment.json").read_text())
    assert enrolment["device_id"] == device_id and enrolment["broker_host"] == "mqtt.example"
    assert enrolment["pairing_code"] in done.stdout
    cert = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    assert cert.public_key() == device_key.public_key()
    assert not [p for p in out.iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    assert (await core.registry.get(device_id)).state == "provisioned"

    again = await healthiot(database, tmp_path / "var", "devices", "provision", "--model",
                            "watch", "--serial", "W-9001", "--out", str(out), "--pki",
                            str(pki.directory))
    assert again.returncode == 2 and "already registered" in again.stderr

    alice, _, _ = await new_patient(core, "alice")
    await core.registry.pair(alice, "W-9000", enrolment["pairing_code"])
    crl_file = tmp_path / "broker" / "device-ca.crl"
    done = await healthiot(database, tmp_path / "var", "devices", "revoke", device_id,
                           "--pki", str(pki.directory), "--crl-file", str(crl_file))
    assert done.returncode == 0, done.stderr
    assert (await core.registry.get(device_id)).state == "revoked"
    crl = x509.load_pem_x509_crl(crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    # Audit rows name a device by its reference (storage/device_refs.py), not its id.
    audit = await core.pool.fetchrow(
        "SELECT actor, patient_id, outcome FROM audit_log WHERE resource ="
        " (SELECT 'device/' || audit_ref FROM devices WHERE id = $1)", device_id)
    assert tuple(audit) == ("operator:cli", alice, "revoked")

    twice = await healthiot(database, tmp_path / "var", "devices", "revoke", device_id,
                            "--pki", str(pki.directory), "--crl-file", str(crl_file))
    assert twice.returncode == 2 and "is revoked: it cannot become revoked" in twice.stderr

    crl_file.unlink()
    done = await healthiot(database, tmp_path / "var", "devices", "crl", "--pki",
                           str(pki.directory), "--crl-file", str(crl_file))
    assert done.returncode == 0 and "1 revoked" in done.stdout, done.stderr
    assert x509.load_pem_x509_crl(crl_file.read_bytes()).get_revoked_certificate_by_serial_number(
        cert.serial_number) is not None


async def test_provision_refuses_a_csr_that_is_not_a_device(database: Database, pki: Pki,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "device.csr").write_bytes(make_csr(new_key(), "svc-bridge"))
    done = await healthiot(database, tmp_path / "var", "devices", "provision", "--model",
                           "watch", "--serial", "X-1", "--out", str(out), "--pki",
                           str(pki.directory))
    assert done.returncode == 2 and "not an acceptable identity" in done.stderr
    assert not (out / "device.pem").exists()
    missing = await healthiot(database, tmp_path / "var", "devices", "provision", "--model",
                              "watch", "--serial", "X-2", "--out", str(tmp_path / "empty"),
                              "--pki", str(pki.directory))
    assert missing.returncode == 2 and "no CSR" in missing.stderr
