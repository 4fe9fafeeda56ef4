"""The patient API through the real application and PostgreSQL: accounts, two factors,
sessions, object-level authorisation on every route, GDPR rights, the audit chain."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from fhir.resources.R4B.bundle import Bundle

from api import totp
from api.account_routes import GUARD
from api.app import create_app
from api.limits import Limits
from api.openapi import PATHS
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from storage.clinicians import Clinicians
from storage.migrate import migrate
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn

PASSWORD = "a quiet river at dawn"


@dataclass
class Account:
    id: str
    username: str
    secret: bytes
    access: str
    refresh: str
    signed_in_step: int  # the TOTP step whose code the sign-in spent

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


@pytest.fixture
async def api(core) -> AsyncIterator[tuple[TestClient[Any, Any], TokenService]]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=1000, request_burst=1000)))
    async with TestClient(TestServer(app)) as client:
        yield client, tokens


def code(secret: bytes, offset_steps: int = 0) -> str:
    return totp.code_at(secret, int(time.time() // totp.STEP_S) + offset_steps)


async def register(client: TestClient[Any, Any], username: str) -> Account:
    resp = await client.post("/v1/accounts", json={"username": username, "password": PASSWORD})
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    secret = totp.secret_from_base32(created["totp"]["secret"])
    step = int(time.time() // totp.STEP_S)
    resp = await client.post("/v1/auth/login", json={
        "username": username, "password": PASSWORD, "totp": totp.code_at(secret, step)})
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    assert tokens["second_factor"] is True
    return Account(created["patient_id"], username, secret, tokens["access_token"],
                   tokens["refresh_token"], step)


async def test_registration_enforces_the_password_policy(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    for password in ("short", "Password123!", "alice.martin2024"):
        resp = await client.post("/v1/accounts", json={"username": "alice.martin",
                                                       "password": password})
        assert resp.status == 422, password
        assert resp.content_type == "application/problem+json"
    resp = await client.post("/v1/accounts", json={"username": "alice.martin",
                                                   "password": PASSWORD, "admin": True})
    assert resp.status == 422  # no mass assignment
    await register(client, "alice.martin")
    resp = await client.post("/v1/accounts", json={"username": "alice.martin",
                                                   "password": PASSWORD})
    assert resp.status == 201  # as for a free name: see test_sign_in_limits.py


async def test_stored_password_is_argon2id(api, core) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    await register(client, "hash.check")
    stored = await core.pool.fetchval(
        "SELECT password_hash FROM patients WHERE username = 'hash.check'")
    assert stored.startswith("$argon2id$")


# What a session with one factor may still do: see its account, settings that hold no health
# data, and revoke a consent (stopping a share can only protect the patient, even with a lost
# phone). Everything else under /v1/me is health data or acts on it.
ONE_FACTOR_ENOUGH = {
    ("get", "/v1/me"), ("get", "/v1/me/timezone"), ("put", "/v1/me/timezone"),
    ("get", "/v1/me/sources/{metric}"), ("put", "/v1/me/sources/{metric}"),
    ("delete", "/v1/me/consents/{consent_id}"),
}
PATH_VALUES = {"metric": "heart_rate", "consent_id": str(uuid.uuid4()),
               "device_id": str(uuid.uuid4()), "patient_id": str(uuid.uuid4()),
               "user": "me", "reading_id": str(uuid.uuid4()), "job_id": str(uuid.uuid4()),
               "kind": "Observation.ndjson"}


async def test_without_the_second_factor_every_health_route_is_403(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "one.factor")
    resp = await client.post("/v1/auth/login", json={"username": "one.factor",
                                                     "password": PASSWORD})
    tokens = await resp.json()
    assert resp.status == 200 and tokens["second_factor"] is False
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    checked = 0
    for path, methods in PATHS.items():
        for method in methods:
            if not path.startswith("/v1/me") or (method, path) in ONE_FACTOR_ENOUGH:
                continue
            resp = await client.request(method, _fill(path, PATH_VALUES), headers=headers,
                                        json={})
            assert resp.status == 403, (method, path, await resp.text())
            checked += 1
    assert checked >= 11  # the document was read, not an empty list
    resp = await client.get("/v1/me", headers=headers)  # the account itself: allowed
    assert resp.status == 200 and (await resp.json())["patient_id"] == account.id


def _forged(tokens: TokenService, claims: dict[str, Any], how: str) -> str:
    if how == "none":
        return jwt.encode(claims, None, algorithm="none", headers={"kid": tokens.kid,
                                                                    "typ": "at+jwt"})
    public = tokens._public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": tokens.kid, "typ": "at+jwt"}
    segments = [base64.urlsafe_b64encode(json.dumps(x).encode()).rstrip(b"=")
                for x in (header, claims)]
    signature = hmac.new(public, b".".join(segments), hashlib.sha256).digest()
    return b".".join([*segments, base64.urlsafe_b64encode(signature).rstrip(b"=")]).decode()


async def test_forged_tokens_get_401(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens = api
    account = await register(client, "forged.target")
    now = int(time.time())
    claims = {"iss": tokens.issuer, "aud": tokens.audience, "sub": account.id, "iat": now,
              "nbf": now, "exp": now + 600, "jti": "x", "amr": ["pwd", "otp"]}
    attempts = [_forged(tokens, claims, "none"), _forged(tokens, claims, "hs256"),
                tokens.issue(account.id, methods=["pwd", "otp"], now=now - 3600)]
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    wrong_aud = claims | {"aud": "another-api"}
    for bad in (no_exp, wrong_aud):
        attempts.append(jwt.encode(bad, tokens._private, algorithm="ES256",
                                   headers={"kid": tokens.kid, "typ": "at+jwt"}))
    for token in attempts:
        resp = await client.get("/v1/me/vitals", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401


async def test_used_foreign_and_expired_codes_are_refused(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "code.owner")  # used the current code to sign in
    other = await register(client, "code.other")

    async def login_with(totp_code: str) -> int:
        resp = await client.post("/v1/auth/login", json={
            "username": "code.owner", "password": PASSWORD, "totp": totp_code})
        return resp.status

    # By step, not by the clock: a step may have passed since the sign-in (a loaded machine).
    used = account.signed_in_step
    assert await login_with(totp.code_at(account.secret, used)) == 401  # already used
    assert await login_with(totp.code_at(account.secret, used - 1)) == 401  # older
    assert await login_with(code(other.secret, 1)) == 401  # another account's code
    assert await login_with(code(account.secret, -4)) == 401  # expired
    assert await login_with(code(account.secret, 1)) == 200  # the next one works, once


async def test_a_reused_refresh_token_revokes_its_family(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "refresher")
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh})
    assert resp.status == 200
    rotated = await resp.json()
    assert rotated["second_factor"] is True
    # The stolen first token is replayed: refused, and the whole family dies.
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh})
    assert resp.status == 401
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert resp.status == 401
    resp = await client.get("/v1/me", headers={
        "Authorization": f"Bearer {rotated['access_token']}"})
    assert resp.status == 401


async def test_logout_revokes_the_session_at_once(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "leaver")
    assert (await client.post("/v1/auth/logout", headers=account.auth())).status == 204
    assert (await client.get("/v1/me", headers=account.auth())).status == 401
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh})
    assert resp.status == 401


async def test_brute_force_is_limited_without_locking_the_user_out(core) -> None:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    limits = Limits(failures_per_account_and_client=3, failure_window_s=60)
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens, limits=limits))
    # The guard's clock is moved by the test: slow password hashing cannot race a window.
    now = [1000.0]
    guard = app[GUARD]
    guard.clock = lambda: now[0]
    async with TestClient(TestServer(app)) as client:
        account = await register(client, "target")
        statuses = []
        for _ in range(5):
            resp = await client.post("/v1/auth/login", json={
                "username": "target", "password": "wrong password guess"})
            statuses.append(resp.status)
        assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]
        assert int(resp.headers["Retry-After"]) >= 1
        now[0] += 61  # the window passes: the real user is slowed down, not locked out
        resp = await client.post("/v1/auth/login", json={
            "username": "target", "password": PASSWORD, "totp": code(account.secret, 1)})
        assert resp.status == 200


async def _seed(core, patient_id: str) -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    t = int(now.timestamp() * 1000) - np.arange(120, 0, -1, dtype=np.int64) * 60_000
    await core.store.ingest([MessageIn(f"watch-{patient_id[:8]}", 1, now, [SegmentIn(
        uuid.UUID(patient_id), "heart_rate", Samples(t, np.full(120, 64.0),
                                                     np.zeros(120, np.uint8)))], 0)])


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def _consent_to_a_clinician(client: TestClient[Any, Any], core, patient: Account  # type: ignore[no-untyped-def]
                                  ) -> str:
    rpps = "10000000009"  # 11 digits, Luhn key 9
    await Clinicians(core.pool, core.keyring).create(
        rpps=rpps, profession="physician", display_name="Dr Roux", username="roux",
        password_hash="$argon2id$unused", totp_secret=totp.new_secret())
    now = dt.datetime.now(dt.UTC)
    resp = await client.post("/v1/me/consents", headers=patient.auth(), json={
        "clinician_rpps": rpps, "metrics": ["heart_rate"], "categories": [],
        "data_from": (now - dt.timedelta(days=5)).isoformat(), "data_to": now.isoformat(),
        "expires_at": (now + dt.timedelta(days=5)).isoformat()})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def test_patient_a_reaches_nothing_of_patient_b_on_any_route(api, core) -> None:  # type: ignore[no-untyped-def]
    """Every documented route and method, as A, aimed at B's real ids: nothing of B shows and
    nothing of B changes."""
    client, _ = api
    a = await register(client, "patient.a")
    b = await register(client, "patient.b")
    await _seed(core, b.id)
    b_consent = await _consent_to_a_clinician(client, core, b)
    b_devices = [str(r["id"]) for r in await core.pool.fetch(
        "SELECT id FROM devices WHERE patient_id = $1", uuid.UUID(b.id))]
    values = PATH_VALUES | {"patient_id": b.id, "consent_id": b_consent,
                            "device_id": (b_devices or [str(uuid.uuid4())])[0]}
    aimed_at_b = 0
    for path, methods in PATHS.items():
        names = {n for n in values if "{" + n + "}" in path} - {"metric"}
        for method in methods:
            if method != "get" and not names:
                continue  # a write without an id acts on A's own account
            url = _fill(path, values)
            if path == "/fhir/Observation":
                url += f"?patient={b.id}"
            resp = await client.request(method, url, headers=a.auth(), json={})
            text = await resp.text()
            if names:
                assert resp.status in (403, 404), (method, url, resp.status)
                aimed_at_b += 1
            assert b.id not in text or resp.status >= 400, url
            assert "patient.b" not in text and "64.0" not in text, url
    assert aimed_at_b >= 4
    # A sees their own (empty) data, never B's 120 samples; B's data and consent are intact.
    resp = await client.get("/v1/me/vitals/heart_rate", headers=a.auth())
    assert (await resp.json())["samples"] == []
    resp = await client.get("/v1/me/vitals/heart_rate", headers=b.auth())
    assert len((await resp.json())["samples"]) == 120
    resp = await client.get("/v1/me/consents", headers=b.auth())
    assert [c["id"] for c in (await resp.json())["consents"] if c["active"]] == [b_consent]


async def test_export_is_a_valid_fhir_bundle_of_everything(api, core) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "exporter")
    await _seed(core, account.id)
    resp = await client.get("/v1/me/export", headers=account.auth())
    assert resp.status == 200
    bundle = await resp.json()
    Bundle.model_validate(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[0] == "Patient" and "Observation" in kinds
    measured = {e["resource"].get("device", {}).get("reference")
                for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"}
    assert measured == {f"Device/watch-{account.id[:8]}"}  # the source, on each one
    values = sum(len(e["resource"]["valueSampledData"]["data"].split())
                 for e in bundle["entry"] if "valueSampledData" in e["resource"])
    assert values == 120 + sum(e["resource"]["valueSampledData"]["data"].count("E")
                               for e in bundle["entry"] if "valueSampledData" in e["resource"])


async def test_erasure_needs_both_factors_and_leaves_nothing_readable(api, core) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "eraser")
    await _seed(core, account.id)
    resp = await client.request("DELETE", "/v1/me", headers=account.auth(),
                                json={"password": PASSWORD, "totp": "000000"})
    assert resp.status == 403
    resp = await client.request("DELETE", "/v1/me", headers=account.auth(), json={
        "password": PASSWORD, "totp": code(account.secret, 1)})
    assert resp.status == 200 and (await resp.json())["segments_removed"] == 1
    pid = uuid.UUID(account.id)
    for table, column in (("patients", "id"), ("segments", "patient_id")):
        assert await core.pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = $1", pid) == 0  # noqa: S608
    assert await core.pool.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1",
                                    account.id) == 0
    assert await core.pool.fetchval("SELECT count(*) FROM erasures WHERE patient_id = $1",
                                    pid) == 1
    resp = await client.post("/v1/auth/login", json={
        "username": "eraser", "password": PASSWORD, "totp": code(account.secret, 2)})
    assert resp.status == 401


async def test_an_edited_audit_row_breaks_the_chain(api, core, database) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "audited")
    for _ in range(3):
        await client.get("/v1/me/vitals/heart_rate", headers=account.auth())
    check = await core.audit.verify_chain()
    assert check.intact and check.rows >= 5
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the services' role
        await core.pool.execute("UPDATE audit_log SET outcome = 'refused'")
    target = await core.pool.fetchval("SELECT id FROM audit_log ORDER BY id LIMIT 1 OFFSET 2")
    conn = await asyncpg.connect(database.admin_dsn, password=database.admin_password)
    try:
        async with conn.transaction():
            # An attacker with the database's own powers, bypassing the trigger.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("UPDATE audit_log SET actor = 'nobody' WHERE id = $1", target)
    finally:
        await conn.close()
    check = await core.audit.verify_chain()
    assert check.first_broken_id == target


async def test_audit_retention_cuts_from_the_oldest_end_and_the_chain_holds(  # type: ignore[no-untyped-def]
        api, core, database) -> None:
    client, _ = api
    account = await register(client, "retained")
    for _ in range(3):
        await client.get("/v1/me/vitals/heart_rate", headers=account.auth())
    middle = await core.pool.fetchval("SELECT at FROM audit_log ORDER BY id LIMIT 1 OFFSET 2")
    assert await core.audit.cut_before(middle) == 0  # not past the retention period yet
    # The period is the owner's to set (`healthiot db migrate`), not the services'.
    conn = await asyncpg.connect(database.admin_dsn, password=database.admin_password)
    try:
        await migrate(conn, audit_retention=dt.timedelta(0))
    finally:
        await conn.close()
    removed = await core.audit.cut_before(middle)
    assert removed == 2
    assert (await core.audit.verify_chain()).intact
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await core.pool.execute("DELETE FROM audit_log")


async def test_body_limits_and_unknown_fields(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    resp = await client.post("/v1/auth/login", data=b"{" + b" " * 70_000 + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413 and resp.content_type == "application/problem+json"
    resp = await client.post("/v1/auth/login", json={"username": "x", "password": "y",
                                                     "role": "admin"})
    assert resp.status == 422


async def test_each_read_of_health_data_writes_exactly_one_audit_event(api, core) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "counted")
    await _seed(core, account.id)
    pid = uuid.UUID(account.id)
    reads = ["/v1/me/vitals/heart_rate", "/v1/me/vitals/heart_rate?resolution=1h",
             "/v1/me/vitals", "/v1/me/summary", "/v1/me/export"]
    for url in reads:
        before = await core.pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE patient_id = $1", pid)
        resp = await client.get(url, headers=account.auth())
        assert resp.status == 200, url
        after = await core.pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE patient_id = $1", pid)
        assert after - before == 1, url
    entries = (await (await client.get("/v1/me/access-log?limit=5",
                                       headers=account.auth())).json())["entries"]
    assert len(entries) == 5 and {e["who"] for e in entries} == {"you"}


async def test_page_size_is_capped_and_pages_follow_on(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    account = await register(client, "pager")
    for bad in ("0", "501", "-1", "ten", "1e3"):
        resp = await client.get(f"/v1/me/access-log?limit={bad}", headers=account.auth())
        assert resp.status == 400 and resp.content_type == "application/problem+json", bad
    for _ in range(3):
        await client.get("/v1/me/vitals", headers=account.auth())
    seen: list[int] = []
    url: str | None = "/v1/me/access-log?limit=2"
    while url:
        page = await (await client.get(url, headers=account.auth())).json()
        assert len(page["entries"]) <= 2
        seen += [e["id"] for e in page["entries"]]
        url = page.get("next")
    assert seen == sorted(set(seen), reverse=True) and len(seen) >= 4


async def test_requests_over_the_rate_limit_get_429_with_retry_after(core) -> None:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=0.5, request_burst=5)))
    async with TestClient(TestServer(app)) as client:
        statuses = [(await client.get("/healthz")).status for _ in range(8)]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
        resp = await client.get("/healthz")
        assert resp.status == 429 and resp.content_type == "application/problem+json"
        assert float(resp.headers["Retry-After"]) >= 1
