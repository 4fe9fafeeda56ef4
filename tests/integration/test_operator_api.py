"""The operator's view of refusals (issue 22), tried as an attacker would: through the real
application and PostgreSQL. An operator signs in with a password and a one-time code; a
patient's or a clinician's token is refused; an operator without the values permission
never sees a payload; every access leaves an audit row, which the patient whose device it
was sees in their access log."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import passwords, totp
from api.app import create_app
from api.limits import Limits
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import make_csr, new_key
from devices.identity import new_device_id
from healthiot.services import Core
from storage.clinicians import Clinicians
from storage.operators import Operators
from storage.store import QuarantineIn
from tests.conftest import Database, Pki, new_patient
from tests.integration.test_clinician_access import rpps_number
from tests.integration.test_device_cli import ROOT

PASSPHRASE = "an operator's long passphrase"
SECRET_VALUE = b'[{"bn":"urn:dev:x:","n":"heart_rate","u":"furlong","v":61.5}]'


@dataclass
class Operator:
    id: uuid.UUID
    username: str
    secret: bytes


@dataclass
class World:
    client: TestClient[Any, Any]
    core: Core
    watch: str  # Alice's
    scale: str  # Bob's
    alice: tuple[uuid.UUID, str, bytes]
    bob: tuple[uuid.UUID, str, bytes]
    reader: Operator  # role operator
    viewer: Operator  # role operator-values


def code(secret: bytes) -> str:
    return totp.code_at(secret, int(time.time() // totp.STEP_S))


async def _device(core: Core, pki: Pki, model: str, patient: uuid.UUID) -> str:
    device_id = new_device_id(model)
    cert = await asyncio.to_thread(pki.ca.issue_client, make_csr(new_key(), device_id))
    await core.registry.register(device_id, model=model, serial=device_id, cert_pem=cert,
                                 patient_id=patient)
    return device_id


async def _operator(core: Core, username: str, role: str) -> Operator:
    secret = totp.new_secret()
    found = await Operators(core.pool, core.keyring).create(
        username=username, display_name=username.title(), role=role,
        password_hash=await asyncio.to_thread(passwords.hash_password, PASSPHRASE),
        totp_secret=secret)
    return Operator(found.id, username, secret)


def _refusal(device: str, hours_ago: float, reason: str) -> QuarantineIn:
    return QuarantineIn(device, f"devices/{device}/telemetry",
                        dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago), reason,
                        "1 of 1: ['unknown_unit']", SECRET_VALUE)


@pytest.fixture
async def world(core: Core, pki: Pki) -> AsyncIterator[World]:
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=1000, request_burst=1000)))
    alice = await new_patient(core, "alice")
    bob = await new_patient(core, "bob")
    watch = await _device(core, pki, "watch", alice[0])
    scale = await _device(core, pki, "scale", bob[0])
    await core.store.ingest_batch([], [
        _refusal(watch, 1, "rejected_samples"), _refusal(watch, 5, "missing_sequence"),
        _refusal(watch, 23, "malformed"), _refusal(watch, 30, "malformed"),
        _refusal(scale, 2, "malformed")])
    reader = await _operator(core, "ops-reader", "operator")
    viewer = await _operator(core, "ops-viewer", "operator-values")
    async with TestClient(TestServer(app)) as client:
        yield World(client, core, watch, scale, alice, bob, reader, viewer)


async def _sign_in(w: World, who: Operator) -> str:
    resp = await w.client.post("/v1/operators/login", json={
        "username": who.username, "password": PASSPHRASE, "totp": code(who.secret)})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


async def _patient_token(w: World, patient: tuple[uuid.UUID, str, bytes],
                         username: str) -> str:
    resp = await w.client.post("/v1/auth/login", json={
        "username": username, "password": patient[1], "totp": code(patient[2])})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _audit_rows(core: Core, operator: Operator) -> list[dict[str, Any]]:
    rows = await core.pool.fetch(
        "SELECT patient_id, action, resource, outcome, client_address FROM audit_log"
        " WHERE actor = $1"
        " ORDER BY id", f"operator:{operator.id}")
    return [dict(r) for r in rows]


async def test_the_operator_finds_every_refusal_of_one_device_in_the_last_day(world: World):
    token = await _sign_in(world, world.reader)
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    resp = await world.client.get("/v1/operator/refusals", headers=_bearer(token),
                                  params={"device": world.watch, "from": since})
    assert resp.status == 200, await resp.text()
    found = await resp.json()
    assert [r["reason"] for r in found["refusals"]] == [
        "rejected_samples", "missing_sequence", "malformed"]  # newest first, 30 h ago out
    assert {r["device_id"] for r in found["refusals"]} == {world.watch}
    assert sorted((c["reason"], c["count"]) for c in found["counts"]) == [
        ("malformed", 1), ("missing_sequence", 1), ("rejected_samples", 1)]
    assert found["truncated"] is False


async def test_refusals_are_counted_per_device_and_reason_over_the_period(world: World):
    token = await _sign_in(world, world.reader)
    resp = await world.client.get("/v1/operator/refusals", headers=_bearer(token),
                                  params={"reason": "malformed", "from": (
                                      dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
                                  ).isoformat()})
    assert resp.status == 200, await resp.text()
    counts = {(c["device_id"], c["reason"]): c["count"] for c in (await resp.json())["counts"]}
    assert counts == {(world.watch, "malformed"): 2, (world.scale, "malformed"): 1}


async def test_an_operator_without_the_values_permission_sees_no_payload(world: World):
    token = await _sign_in(world, world.reader)
    resp = await world.client.get("/v1/operator/refusals", headers=_bearer(token),
                                  params={"device": world.watch})
    text = await resp.text()
    assert resp.status == 200, text
    assert "61.5" not in text and "furlong" not in text
    assert all("payload" not in r for r in (await resp.json())["refusals"])
    asked = await world.client.get("/v1/operator/refusals", headers=_bearer(token),
                                   params={"device": world.watch, "include": "payload"})
    assert asked.status == 403
    body = await asked.text()
    assert "61.5" not in body and "furlong" not in body
    rows = await _audit_rows(world.core, world.reader)
    assert rows[-1]["outcome"] == "refused"
    assert rows[-1]["resource"].endswith("/payloads") and rows[-1]["patient_id"] is None


async def test_an_operator_with_the_values_permission_opens_payloads_and_the_patient_sees_it(
        world: World):
    token = await _sign_in(world, world.viewer)
    resp = await world.client.get("/v1/operator/refusals", headers=_bearer(token),
                                  params={"device": world.watch, "include": "payload"})
    assert resp.status == 200, await resp.text()
    payloads = {base64.b64decode(r["payload"]) for r in (await resp.json())["refusals"]}
    assert payloads == {SECRET_VALUE}

    alice = await _patient_token(world, world.alice, "alice")
    log = await (await world.client.get("/v1/me/access-log", headers=_bearer(alice))).json()
    mine = [e for e in log["entries"] if e["actor"] == f"operator:{world.viewer.id}"]
    assert mine, "Alice does not see the operator's access to her device's refusals"
    assert {e["action"] for e in mine} == {"read"}
    assert {e["what"] for e in mine} == {f"device/{world.watch}/refusals/payloads"}
    assert all("operator" in e["who"] for e in mine)
    fhir_log = await (await world.client.get("/v1/me/access-log", headers=_bearer(alice),
                                             params={"format": "fhir"})).json()
    assert any("operator" in str(entry) for entry in fhir_log["entry"])
    bob = await _patient_token(world, world.bob, "bob")
    log = await (await world.client.get("/v1/me/access-log", headers=_bearer(bob))).json()
    assert not [e for e in log["entries"] if e["actor"].startswith("operator:")]


async def test_every_access_leaves_an_audit_row(world: World):
    token = await _sign_in(world, world.reader)
    before = len(await _audit_rows(world.core, world.reader))
    for params in ({"device": world.watch}, {"reason": "malformed"}, {"device": "watch-none"}):
        resp = await world.client.get("/v1/operator/refusals", headers=_bearer(token),
                                      params=params)
        assert resp.status == 200
    rows = (await _audit_rows(world.core, world.reader))[before:]
    general = [r for r in rows if r["patient_id"] is None]
    assert len(general) == 3 and all(r["action"] == "read" for r in general)
    assert {r["client_address"] for r in rows} == {"127.0.0.1"}  # where the operator was
    # Each patient whose device's refusals were listed has a row of their own.
    assert {r["patient_id"] for r in rows if r["patient_id"]} == {world.alice[0],
                                                                  world.bob[0]}


@pytest.mark.parametrize("who", ["patient", "clinician", "no second factor", "none"])
async def test_tokens_other_than_an_operator_s_are_refused(world: World, who: str):
    if who == "patient":
        headers = _bearer(await _patient_token(world, world.alice, "alice"))
    elif who == "clinician":
        secret = totp.new_secret()
        await Clinicians(world.core.pool, world.core.keyring).create(
            rpps=rpps_number(7), profession="physician", display_name="Dr Roux",
            username="roux", password_hash=await asyncio.to_thread(passwords.hash_password,
                                                                   PASSPHRASE),
            totp_secret=secret)
        resp = await world.client.post("/v1/clinicians/login", json={
            "username": "roux", "password": PASSPHRASE, "totp": code(secret)})
        headers = _bearer((await resp.json())["access_token"])
    elif who == "no second factor":
        resp = await world.client.post("/v1/operators/login", json={
            "username": world.reader.username, "password": PASSPHRASE})
        assert resp.status == 422  # the code is required: no one-factor operator session
        return
    else:
        headers = {}
    resp = await world.client.get("/v1/operator/refusals", headers=headers,
                                  params={"device": world.watch})
    assert resp.status == (401 if who == "none" else 403)
    assert world.watch not in await resp.text()


async def test_a_wrong_code_or_password_is_refused(world: World):
    for password, otp in ((PASSPHRASE, "000000"), ("not the passphrase", code(
            world.reader.secret))):
        resp = await world.client.post("/v1/operators/login", json={
            "username": world.reader.username, "password": password, "totp": otp})
        assert resp.status == 401


async def healthiot(database: Database, keys: Path, *args: str
                    ) -> subprocess.CompletedProcess[str]:
    """The CLI on the test's database, with the keys of the ``core`` fixture (in ``keys``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHIOT_")}
    env.update({"HEALTHIOT_DATABASE_URL": database.dsn,
                "HEALTHIOT_DATABASE_PASSWORD": database.password,
                "HEALTHIOT_VAR_DIR": str(keys / "var"),
                "HEALTHIOT_KEK_FILE": str(keys / "kek.bin"),
                "HEALTHIOT_OWNER_KEYS_DIR": str(keys / "owner-keys")})
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "healthiot.cli", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False)


async def test_the_cli_adds_an_operator_who_can_sign_in(core: Core, database: Database,
                                                        tmp_path: Path):
    done = await healthiot(database, tmp_path, "operators", "add", "--username", "Night-Ops",
                           "--name", "Night shift", "--role", "operator")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines()[1:])
    found = await Operators(core.pool, core.keyring).by_username("night-ops")
    assert found is not None and found.role == "operator"
    assert passwords.verify_password(found.password_hash, lines["password"])
    secret = totp.secret_from_base32(lines["TOTP secret (add to an authenticator app)"])
    assert await Operators(core.pool, core.keyring).totp_secret(found.id) == secret
    again = await healthiot(database, tmp_path, "operators", "add", "--username", "night-ops",
                            "--name", "Again", "--role", "operator")
    assert again.returncode != 0 and "already" in again.stderr
    wrong = await healthiot(database, tmp_path, "operators", "add", "--username", "x-ops",
                            "--name", "X", "--role", "superuser")
    assert wrong.returncode != 0
