"""The device registry's life cycle against a real PostgreSQL: provisioning from a CSR,
single-use pairing codes with attempt limits, transitions, certificate history."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
import uuid
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from aiopaho import MqttError
from devices.ca import CertificateAuthority, make_csr, new_key
from devices.errors import (
    DuplicateDevice,
    InvalidTransition,
    PairingRefused,
    PairingThrottled,
    UnknownDevice,
)
from devices.identity import new_device_id
from devices.provisioning import provision, write_enrolment
from devices.registry import DEVICE_FAILURES, PATIENT_FAILURES
from devices.revocation import Revoker
from healthiot.services import Core
from tests.conftest import Pki, new_patient


async def provisioned(core: Core, ca: CertificateAuthority, serial: str,
                      model: str = "watch") -> tuple[str, str, x509.Certificate]:
    """(device id, pairing code, certificate) of a device that made its own key."""
    key = new_key()  # on the device
    device_id = new_device_id(model)
    enrolment, cert_pem = await provision(core.registry, ca, model=model, serial=serial,
                                          csr_pem=make_csr(key, device_id),
                                          broker_host="localhost", broker_port=8883)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.public_key() == key.public_key()
    return enrolment.device_id, enrolment.pairing_code, cert


async def test_provisioning_issues_from_the_device_csr_and_stores_only_a_code_hash(
        core: Core, pki: Pki, tmp_path: Path) -> None:
    key = new_key()
    device_id = new_device_id("scale")
    enrolment, cert_pem = await provision(core.registry, pki.ca, model="scale",
                                          serial="SC-0001", csr_pem=make_csr(key, device_id),
                                          broker_host="mqtt.example", broker_port=8883)
    write_enrolment(tmp_path / "out", enrolment, cert_pem, pki.ca)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "device.pem", "enrolment.json"]
    assert b"PRIVATE KEY" not in b"".join(p.read_bytes() for p in out.iterdir())
    saved = json.loads((out / "enrolment.json").read_text())
    assert saved["device_id"] == device_id and saved["pairing_code"] == enrolment.pairing_code
    assert saved["broker_host"] == "mqtt.example"
    assert stat.S_IMODE((out / "enrolment.json").stat().st_mode) == 0o600
    assert (await core.registry.get(device_id)).state == "provisioned"
    row = await core.pool.fetchrow("SELECT * FROM device_pairing WHERE device_id = $1",
                                   device_id)
    code = enrolment.pairing_code.replace("-", "").encode()
    assert code not in bytes(row["code_hash"]) and code not in bytes(row["salt"])
    dump = await core.pool.fetchval("SELECT string_agg(t::text, '') FROM device_pairing t")
    assert enrolment.pairing_code.replace("-", "") not in dump
    [history] = await core.registry.certificates(device_id)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert history.serial == format(cert.serial_number, "x")
    assert history.expires_at == cert.not_valid_after_utc and history.revoked_at is None


async def test_provisioning_refuses_a_known_device_or_serial(core: Core, pki: Pki) -> None:
    device_id, _, _ = await provisioned(core, pki.ca, "W-1")
    with pytest.raises(DuplicateDevice):
        await provision(core.registry, pki.ca, model="watch", serial="W-2",
                        csr_pem=make_csr(new_key(), device_id), broker_host="h", broker_port=1)
    with pytest.raises(DuplicateDevice):
        await provision(core.registry, pki.ca, model="watch", serial="W-1",
                        csr_pem=make_csr(new_key(), new_device_id("watch")),
                        broker_host="h", broker_port=1)


async def test_a_pairing_code_binds_the_device_once(core: Core, pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    mallory, _, _ = await new_patient(core, "mallory")
    device_id, code, _ = await provisioned(core, pki.ca, "W-100")
    device = await core.registry.pair(alice, "W-100", code.lower().replace("-", " "))
    assert (device.id, device.state, device.patient_id) == (device_id, "paired", alice)
    assert device.may_send
    with pytest.raises(PairingRefused):
        await core.registry.pair(mallory, "W-100", code)  # used: the same vague answer
    assert (await core.registry.get(device_id)).patient_id == alice


async def test_wrong_and_unknown_answers_are_alike(core: Core, pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    _, code, _ = await provisioned(core, pki.ca, "W-200")
    answers = set()
    for serial, typed in (("W-200", "AAAAA-AAAAA"), ("NO-SUCH", code), ("W-200", "short")):
        with pytest.raises(PairingRefused) as caught:
            await core.registry.pair(alice, serial, typed)
        answers.add(str(caught.value))
    assert len(answers) == 1


async def test_wrong_codes_are_limited_per_patient_without_locking_out_others(
        core: Core, pki: Pki) -> None:
    guesser, _, _ = await new_patient(core, "guesser")
    owner, _, _ = await new_patient(core, "owner")
    device_id, code, _ = await provisioned(core, pki.ca, "W-300")
    limit, window = PATIENT_FAILURES
    for _ in range(limit):
        with pytest.raises(PairingRefused) as caught:
            await core.registry.pair(guesser, "W-300", "ZZZZZ-ZZZZZ")
        assert not isinstance(caught.value, PairingThrottled)
    with pytest.raises(PairingThrottled) as throttled:
        await core.registry.pair(guesser, "W-300", code)  # even the right code, now
    assert 0 < throttled.value.retry_after_s <= window.total_seconds()
    assert (await core.registry.get(device_id)).state == "provisioned"
    assert (await core.registry.pair(owner, "W-300", code)).patient_id == owner
    later = dt.datetime.now(dt.UTC) + window + dt.timedelta(seconds=1)
    with pytest.raises(PairingRefused) as after:  # the window slid: refused, not throttled
        await core.registry.pair(guesser, "W-300", "ZZZZZ-ZZZZZ", now=later)
    assert not isinstance(after.value, PairingThrottled)


async def test_an_expired_code_is_refused(core: Core, pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    device_id = new_device_id("watch")
    cert = pki.ca.issue_client(make_csr(new_key(), device_id))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    _, code = await core.registry.provision(device_id, model="watch", serial="W-400",
                                            cert_pem=cert, now=long_ago)
    with pytest.raises(PairingRefused, match="expired"):
        await core.registry.pair(alice, "W-400", code)
    assert (await core.registry.get(device_id)).state == "provisioned"


async def test_transitions_outside_the_life_cycle_are_refused(core: Core, pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    device_id, code, _ = await provisioned(core, pki.ca, "W-500")
    await core.registry.pair(alice, "W-500", code)
    assert (await core.registry.revoke(device_id)).state == "revoked"
    with pytest.raises(InvalidTransition, match="is revoked: it cannot become revoked"):
        await core.registry.revoke(device_id)
    with pytest.raises(ValueError, match="pair"):
        await core.registry.transition(device_id, "paired")
    assert (await core.registry.transition(device_id, "retired")).state == "retired"
    with pytest.raises(InvalidTransition, match=r"nothing \(final state\)"):
        await core.registry.revoke(device_id)
    # Whoever writes, the database allows no way back into service.
    with pytest.raises(asyncpg.CheckViolationError, match="cannot become paired"):
        await core.pool.execute("UPDATE devices SET state = 'paired' WHERE id = $1", device_id)
    with pytest.raises(UnknownDevice):
        await core.registry.revoke("watch-000000000000")


async def test_revocation_marks_the_certificates_for_the_crl_whoever_revokes(
        core: Core, pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    by_registry, code, cert_a = await provisioned(core, pki.ca, "W-600")
    await core.registry.pair(alice, "W-600", code)
    by_sql, _, cert_b = await provisioned(core, pki.ca, "W-601")
    kept, _, cert_c = await provisioned(core, pki.ca, "W-602")
    await core.registry.revoke(by_registry, patient_id=alice)
    # storage/erasure.py revokes with plain SQL: the trigger still revokes the certificate.
    await core.pool.execute("UPDATE devices SET state = 'revoked' WHERE id = $1", by_sql)
    revoked = dict(await core.registry.revoked_certificates())
    assert set(revoked) == {cert_a.serial_number, cert_b.serial_number}
    [history] = await core.registry.certificates(by_registry)
    assert history.revoked_at is not None and history.revocation_reason == "revoked"
    assert history.revoked_at == revoked[cert_a.serial_number]
    assert (await core.registry.certificates(kept))[0].revoked_at is None
    assert cert_c.serial_number not in revoked
    # A revoked provisioned device's unused code dies with it.
    assert await core.pool.fetchval(
        "SELECT used_at IS NOT NULL FROM device_pairing WHERE device_id = $1", by_sql)
    after_expiry = cert_a.not_valid_after_utc + dt.timedelta(seconds=1)
    assert await core.registry.revoked_certificates(after_expiry) == []


async def test_another_patient_cannot_revoke_my_device(core: Core, pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    bob, _, _ = await new_patient(core, "bob")
    device_id, code, _ = await provisioned(core, pki.ca, "W-700")
    await core.registry.pair(alice, "W-700", code)
    with pytest.raises(UnknownDevice):
        await core.registry.revoke(device_id, patient_id=bob)
    with pytest.raises(UnknownDevice):
        await core.registry.revoke(device_id, patient_id=uuid.uuid4())
    assert (await core.registry.get(device_id)).state == "paired"
    assert [d.id for d in await core.registry.for_patient(alice)] == [device_id]
    assert await core.registry.for_patient(bob) == []


async def test_a_renewed_certificate_joins_the_history(core: Core, pki: Pki) -> None:
    device_id, _, first = await provisioned(core, pki.ca, "W-800")
    second = pki.ca.issue_client(make_csr(new_key(), device_id))
    await core.registry.add_certificate(device_id, second)
    history = await core.registry.certificates(device_id)
    assert [h.serial for h in history] == [
        format(first.serial_number, "x"),
        format(x509.load_pem_x509_certificate(second).serial_number, "x")]
    current = await core.pool.fetchval("SELECT cert_serial FROM devices WHERE id = $1",
                                       device_id)
    assert current == format(x509.load_pem_x509_certificate(second).serial_number, "x")
    with pytest.raises(UnknownDevice):
        await core.registry.add_certificate("watch-000000000000", second)



async def test_guessing_spread_over_accounts_is_stopped_per_device(core: Core,
                                                                   pki: Pki) -> None:
    _, code, _ = await provisioned(core, pki.ca, "W-900")
    per_patient, _ = PATIENT_FAILURES
    per_device, window = DEVICE_FAILURES
    guessers = [(await new_patient(core, f"guesser{i}"))[0]
                for i in range(per_device // per_patient)]
    for guesser in guessers:  # each stays under its own limit
        for _ in range(per_patient):
            with pytest.raises(PairingRefused):
                await core.registry.pair(guesser, "W-900", "ZZZZZ-ZZZZZ")
    owner, _, _ = await new_patient(core, "owner")
    with pytest.raises(PairingThrottled) as caught:
        await core.registry.pair(owner, "W-900", code)  # the device is shut for a while
    assert 0 < caught.value.retry_after_s <= window.total_seconds()
    later = dt.datetime.now(dt.UTC) + window + dt.timedelta(seconds=1)
    assert (await core.registry.pair(owner, "W-900", code, now=later)).patient_id == owner


async def test_two_patients_racing_with_the_right_code_one_wins(core: Core, pki: Pki) -> None:
    device_id, code, _ = await provisioned(core, pki.ca, "W-950")
    patients = [(await new_patient(core, f"racer{i}"))[0] for i in range(4)]
    results = await asyncio.gather(*(core.registry.pair(p, "W-950", code) for p in patients),
                                   return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, PairingRefused) for r in results if r not in winners)
    assert (await core.registry.get(device_id)).patient_id == winners[0].patient_id


async def test_a_broker_step_that_fails_leaves_the_revocation_in_force(core: Core,
                                                                       pki: Pki) -> None:
    alice, _, _ = await new_patient(core, "alice")
    device_id, code, _ = await provisioned(core, pki.ca, "W-990")
    await core.registry.pair(alice, "W-990", code)
    ended: list[str] = []

    async def broker_down(device: str) -> None:
        ended.append(device)
        raise MqttError("cannot connect to localhost:1: refused")

    device = await Revoker(core.registry, None, broker_down).revoke(device_id)
    assert device.state == "revoked" and not device.may_send
    assert ended == [device_id]
    assert (await core.registry.get(device_id)).state == "revoked"
