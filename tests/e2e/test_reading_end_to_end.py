"""One reading through every real part: device key and CSR, the CA, Mosquitto over mTLS,
the bridge, sealed storage in PostgreSQL, and the patient API over HTTPS."""

import logging
import ssl
import time

import aiohttp
import pytest

from api import totp
from api.tokens import TokenService
from devices.ca import key_pem, new_key, write_private
from healthiot.localservers import free_port
from healthiot.services import server_tls, start_api
from healthiot.stack import load_jwt_key
from tests.conftest import new_patient, new_watch, wait_until
from vitals.senml import decode_json


@pytest.fixture
async def api(core, pki, tmp_path):
    key_file = tmp_path / "jwt.key"
    write_private(key_file, key_pem(new_key()))
    tokens = TokenService(load_jwt_key(key_file), issuer="https://test", audience="test")
    port = free_port()
    runner = await start_api(core, tokens, host="127.0.0.1", port=port,
                             tls=server_tls(pki.server_cert, pki.server_key))
    client_tls = ssl.create_default_context(cafile=str(pki.ca.ca_file))
    async with aiohttp.ClientSession(
            base_url=f"https://localhost:{port}",
            connector=aiohttp.TCPConnector(ssl=client_tls),
            timeout=aiohttp.ClientTimeout(total=15)) as session:
        session.tokens = tokens  # for tests that need a token no route would issue
        session.port = port
        yield session
    await runner.cleanup()


async def _login(api, username, password, secret):
    async with api.post("/v1/auth/login", json={
            "username": username, "password": password, "totp": totp.now_code(secret)}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["access_token"]


async def test_a_watch_reading_reaches_its_patient_through_every_part(
        core, pki, broker, bridge, api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    alice, alice_pw, alice_secret = await new_patient(core, "alice")
    _, bob_pw, bob_secret = await new_patient(core, "bob")
    watch = await new_watch(core, pki, broker, tmp_path, alice)

    now = time.time()
    watch.measure(now - 10, now)  # ten seconds of 1 Hz heart rate, one SenML batch
    sent = decode_json(watch._outbox[0].payload, received_at=now)
    await watch.flush(timeout=15)
    assert watch.ledger.messages == 1 and watch.pending == 0  # PUBACK received

    async def stored():
        return (await core.store.count_stored([watch.device_id]))[0] == 1
    await wait_until(stored)

    token = await _login(api, "alice", alice_pw, alice_secret)
    async with api.get("/v1/me/vitals/heart_rate",
                       headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        body = await r.json()
    expected = [v for m, v in zip(sent.metrics, sent.values, strict=True) if m == "heart_rate"]
    assert [s["v"] for s in body["samples"]] == expected
    assert body["unit"] == "/min" and body["loinc"] == "8867-4"

    # The reading is alice's alone.
    other = await _login(api, "bob", bob_pw, bob_secret)
    async with api.get("/v1/me/vitals/heart_rate",
                       headers={"Authorization": f"Bearer {other}"}) as r:
        assert (await r.json())["samples"] == []

    # Stored sealed: no heart-rate value appears in clear in the segment rows.
    raw = await core.pool.fetchval("SELECT string_agg(sealed, ''::bytea) FROM segments")
    assert all(str(v).encode() not in raw for v in expected)

    # No health value in any log line, whatever the level. A record's own times and ids
    # are left out: their digits can spell a value by chance.
    clocks = {"created", "msecs", "relativeCreated", "thread", "process"}
    logged = "\n".join(r.getMessage() + repr({k: v for k, v in vars(r).items()
                                               if k not in clocks})
                       for r in caplog.records)
    assert not [v for v in expected if str(v) in logged]

    # The read was audited, without values.
    rows = await core.audit.for_patient(alice)
    assert any(r["action"] == "read" and r["resource"] == "vitals/heart_rate" for r in rows)


async def test_health_data_needs_a_token_and_a_second_factor(core, api):
    patient, _, _ = await new_patient(core, "carol")
    async with api.get("/v1/me/vitals/heart_rate") as r:
        assert r.status == 401
        assert r.content_type == "application/problem+json"
    password_only = api.tokens.issue(str(patient), methods=["pwd"])
    async with api.get("/v1/me/vitals/heart_rate",
                       headers={"Authorization": f"Bearer {password_only}"}) as r:
        assert r.status == 403
        assert (await r.json())["status"] == 403
    both = api.tokens.issue(str(patient), methods=["pwd", "otp"])
    async with api.get("/v1/me/vitals/heart_rate",
                       headers={"Authorization": f"Bearer {both}"}) as r:
        assert r.status == 200


async def test_login_refuses_a_wrong_code_and_unknown_fields(core, api):
    _, password, secret = await new_patient(core, "dave")
    wrong = str((int(totp.now_code(secret)) + 1) % 1_000_000).zfill(6)
    async with api.post("/v1/auth/login", json={
            "username": "dave", "password": password, "totp": wrong}) as r:
        assert r.status == 401
    async with api.post("/v1/auth/login", json={
            "username": "dave", "password": password, "totp": totp.now_code(secret),
            "role": "admin"}) as r:
        assert r.status == 422
        assert (await r.json())["unknown"] == ["role"]


async def test_the_api_speaks_tls_with_aead_suites_only(api, pki):
    cbc = ssl.create_default_context(cafile=str(pki.ca.ca_file))
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(aiohttp.ClientConnectorError):
        async with api.get("/healthz", ssl=cbc):
            pass
    aead = ssl.create_default_context(cafile=str(pki.ca.ca_file))
    aead.maximum_version = ssl.TLSVersion.TLSv1_2
    async with api.get("/healthz", ssl=aead) as r:
        assert r.status == 200
    # And no plaintext HTTP at all: the server hangs up on it.
    with pytest.raises((aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)):
        async with api.get(f"http://localhost:{api.port}/healthz"):
            pass
