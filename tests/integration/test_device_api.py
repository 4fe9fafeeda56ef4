"""The patient's device routes through the real application and PostgreSQL: pairing,
listing, unpairing with revocation (registry, certificate history, CRL), two factors,
audit events, and no way to reach another patient's device."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from api.app import create_app
from api.limits import Limits
from api.openapi import PATHS
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from devices.registry import PATIENT_FAILURES
from devices.revocation import CrlPublisher, Revoker
from healthiot.services import Core
from tests.conftest import Pki
from tests.integration.test_device_registry import provisioned
from tests.integration.test_patient_api import PASSWORD, Account, register


@pytest.fixture
def crl_file(tmp_path: Path) -> Path:
    return tmp_path / "broker" / "device-ca.crl"


@pytest.fixture
async def api(core: Core, pki: Pki, crl_file: Path) -> AsyncIterator[TestClient[Any, Any]]:
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=1000, request_burst=1000)),
                     revoker=Revoker(core.registry, CrlPublisher(core.registry, pki.ca,
                                                                 crl_file)))
    async with TestClient(TestServer(app)) as client:
        yield client


async def _audit(core: Core, account: Account) -> list[tuple[str, str, str]]:
    rows = await core.pool.fetch(
        "SELECT action, resource, outcome FROM audit_log WHERE patient_id = $1"
        " AND action IN ('device', 'read') ORDER BY id", uuid.UUID(account.id))
    return [(r["action"], r["resource"], r["outcome"]) for r in rows]


async def test_pair_list_and_unpair_my_device(api: TestClient[Any, Any], core: Core, pki: Pki,
                                              crl_file: Path) -> None:
    alice = await register(api, "alice.pairs")
    device_id, code, cert = await provisioned(core, pki.ca, "W-1000")
    resp = await api.post("/v1/me/devices/pair", headers=alice.auth(),
                          json={"serial": "W-1000", "pairing_code": code})
    assert resp.status == 201, await resp.text()
    paired = await resp.json()
    assert (paired["id"], paired["state"], paired["model"]) == (device_id, "paired", "watch")
    assert paired["battery"] is None and paired["last_seen"] is None

    seen = dt.datetime(2026, 5, 1, 8, 30, tzinfo=dt.UTC)
    await core.pool.execute("UPDATE devices SET last_seen = $2, battery_percent = 64,"
                            " battery_at = $2 WHERE id = $1", device_id, seen)
    resp = await api.get("/v1/me/devices", headers=alice.auth())
    [listed] = (await resp.json())["devices"]
    assert listed["serial"] == "W-1000" and listed["state"] == "paired"
    assert listed["last_seen"] == seen.isoformat()
    assert listed["battery"] == {"percent": 64, "at": seen.isoformat()}
    # The answers are what the OpenAPI document promises, battery or not.
    for path, method, status, answer in (
            ("/v1/me/devices/pair", "post", "201", paired),
            ("/v1/me/devices", "get", "200", {"devices": [listed]})):
        schema = PATHS[path][method]["responses"][status]["content"]["application/json"]
        jsonschema_rs.validate(schema["schema"], answer)

    assert not crl_file.exists()
    resp = await api.delete(f"/v1/me/devices/{device_id}", headers=alice.auth())
    assert resp.status == 204, await resp.text()
    resp = await api.get("/v1/me/devices", headers=alice.auth())
    [listed] = (await resp.json())["devices"]
    assert listed["state"] == "revoked" and listed["state_changed_at"] is not None
    [history] = await core.registry.certificates(device_id)
    assert history.revoked_at is not None
    crl = x509.load_pem_x509_crl(crl_file.read_bytes())
    assert crl.is_signature_valid(pki.ca.device_ca.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    resp = await api.delete(f"/v1/me/devices/{device_id}", headers=alice.auth())
    assert resp.status == 409  # already revoked: said plainly
    assert resp.content_type == "application/problem+json"
    # The log names the device by its reference (storage/device_refs.py), not by its id.
    ref = await core.pool.fetchval("SELECT audit_ref FROM devices WHERE id = $1", device_id)
    assert await _audit(core, alice) == [
        ("device", f"device/{ref}", "paired"), ("read", "devices", "ok"),
        ("device", f"device/{ref}", "revoked"), ("read", "devices", "ok"),
        ("device", f"device/{ref}", "refused")]
    assert (await core.audit.verify_chain()).intact


async def test_patient_a_never_sees_pairs_or_unpairs_patient_b_device(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    alice = await register(api, "alice.owner")
    bob = await register(api, "bob.other")
    device_id, code, _ = await provisioned(core, pki.ca, "W-2000")
    resp = await api.post("/v1/me/devices/pair", headers=bob.auth(),
                          json={"serial": "W-2000", "pairing_code": code})
    assert resp.status == 201
    # Alice, even knowing the serial and the (used) code, cannot take it...
    resp = await api.post("/v1/me/devices/pair", headers=alice.auth(),
                          json={"serial": "W-2000", "pairing_code": code})
    assert resp.status == 422
    # ...cannot see it...
    resp = await api.get("/v1/me/devices", headers=alice.auth())
    assert (await resp.json())["devices"] == []
    # ...and cannot unpair it: the answer is the one for a device that does not exist.
    resp = await api.delete(f"/v1/me/devices/{device_id}", headers=alice.auth())
    missing = await api.delete("/v1/me/devices/watch-000000000000", headers=alice.auth())
    assert resp.status == missing.status == 404
    assert (await resp.json())["detail"] == (await missing.json())["detail"]
    assert (await core.registry.get(device_id)).state == "paired"
    resp = await api.get("/v1/me/devices", headers=bob.auth())
    assert [d["id"] for d in (await resp.json())["devices"]] == [device_id]


async def test_device_routes_need_the_second_factor(api: TestClient[Any, Any], core: Core,
                                                    pki: Pki) -> None:
    account = await register(api, "one.factor")
    device_id, code, _ = await provisioned(core, pki.ca, "W-3000")
    resp = await api.post("/v1/auth/login", json={"username": "one.factor",
                                                  "password": PASSWORD})
    headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    for method, route, body in (
            ("POST", "/v1/me/devices/pair", {"serial": "W-3000", "pairing_code": code}),
            ("GET", "/v1/me/devices", None),
            ("DELETE", f"/v1/me/devices/{device_id}", None)):
        resp = await api.request(method, route, headers=headers, json=body)
        assert resp.status == 403, (method, route)
        resp = await api.request(method, route, json=body)
        assert resp.status == 401, (method, route)
    assert (await core.registry.get(device_id)).state == "provisioned"
    assert await _audit(core, account) == []


async def test_pairing_bodies_are_strict_and_guessing_gets_429(
        api: TestClient[Any, Any], core: Core, pki: Pki) -> None:
    alice = await register(api, "alice.typos")
    device_id, code, _ = await provisioned(core, pki.ca, "W-4000")
    for body in ({"serial": "W-4000"}, {"serial": "W-4000", "pairing_code": code,
                                       "patient_id": alice.id},
                 {"serial": "", "pairing_code": code}, {"serial": "W-4000", "pairing_code": 7},
                 {"serial": "W" * 65, "pairing_code": code}):
        resp = await api.post("/v1/me/devices/pair", headers=alice.auth(), json=body)
        assert resp.status == 422, body
    limit, _ = PATIENT_FAILURES
    for _ in range(limit):
        resp = await api.post("/v1/me/devices/pair", headers=alice.auth(),
                              json={"serial": "W-4000", "pairing_code": "ZZZZZ-ZZZZZ"})
        assert resp.status == 422
    resp = await api.post("/v1/me/devices/pair", headers=alice.auth(),
                          json={"serial": "W-4000", "pairing_code": code})
    assert resp.status == 429
    assert 0 < int(resp.headers["Retry-After"]) <= 15 * 60
    assert (await core.registry.get(device_id)).state == "provisioned"
    outcomes = [o for _, r, o in await _audit(core, alice) if r == "devices/pair"]
    assert outcomes == ["refused"] * limit + ["throttled"]


async def test_the_path_pair_is_not_a_device_to_delete(api: TestClient[Any, Any]) -> None:
    alice = await register(api, "alice.paths")
    resp = await api.delete("/v1/me/devices/pair", headers=alice.auth())
    assert resp.status == 404, resp.status
    assert resp.content_type == "application/problem+json"
