"""Response headers over real HTTPS: HSTS, nosniff and a Server header without a version on
every answer (errors of the HTTP parser included), no caching of tokens or health data,
and CORS off unless configured, then for the exact origins configured only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from api import totp
from api.app import create_app
from api.headers import cors_origins
from api.limits import Limits
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from tests.conftest import Pki
from tests.integration.https import Https, https

PASSWORD = "a quiet river at dawn"
APP_ORIGIN = "https://app.healthiot.example"


def _secure(headers: CIMultiDictProxy[str], what: str) -> None:
    assert headers.get("Strict-Transport-Security", "").startswith("max-age="), what
    assert int(headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 31536000
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    server = headers.get("Server", "")
    assert "aiohttp" not in server.lower() and "python" not in server.lower(), what
    assert not any(c.isdigit() for c in server), what


@asynccontextmanager
async def serve(core: Any, pki: Pki, **app_options: Any) -> AsyncIterator[Https]:
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=1000, request_burst=1000)),
                     **app_options)
    async with https(app, pki) as server:
        yield server


@pytest.fixture
async def api(core, pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:  # type: ignore[no-untyped-def]
    async with serve(core, pki) as server:
        yield await server.client()


async def _call(client: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
                ) -> tuple[int, CIMultiDictProxy[str], Any]:
    async with client.request(method, path, **kwargs) as resp:
        body = await resp.json(content_type=None) if resp.content_type.endswith("json") \
            else await resp.read()
        return resp.status, resp.headers, body


async def _signed_in(client: aiohttp.ClientSession) -> tuple[dict[str, str], dict[str, Any]]:
    _, _, created = await _call(client, "POST", "/v1/accounts", json={
        "username": "headers", "password": PASSWORD})
    secret = totp.secret_from_base32(created["totp"]["secret"])
    status, headers, tokens = await _call(client, "POST", "/v1/auth/login", json={
        "username": "headers", "password": PASSWORD,
        "totp": totp.code_at(secret, int(time.time() // totp.STEP_S))})
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    return {"Authorization": f"Bearer {tokens['access_token']}"}, tokens


async def test_every_answer_has_hsts_nosniff_and_no_server_version(api) -> None:  # type: ignore[no-untyped-def]
    auth, _ = await _signed_in(api)
    for method, path, kwargs in [
            ("GET", "/healthz", {}), ("GET", "/openapi.json", {}),
            ("GET", "/v1/me", {}), ("GET", "/v1/me", {"headers": auth}),
            ("GET", "/v1/me/vitals/heart_rate", {"headers": auth}),
            ("GET", "/nowhere", {}), ("DELETE", "/healthz", {}),
            ("POST", "/v1/auth/login", {"data": b"{", "headers": {
                "Content-Type": "application/json"}}),
            ("GET", "/fhir/metadata", {}), ("GET", "/fhir/Observation", {})]:
        status, headers, _ = await _call(api, method, path, **kwargs)
        _secure(headers, f"{method} {path} {status}")


async def test_a_request_the_http_parser_refuses_gets_a_problem_with_the_same_headers(
        api) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await _call(api, "GET", "/healthz",
                                        headers={"X-Long": "x" * 20_000})
    assert status == 400 or status == 431
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == status
    _secure(headers, "parser error")


async def test_tokens_and_health_data_are_never_cached(api) -> None:  # type: ignore[no-untyped-def]
    auth, tokens = await _signed_in(api)
    for method, path, kwargs in [
            ("POST", "/v1/auth/refresh", {"json": {"refresh_token": tokens["refresh_token"]}}),
            ("GET", "/v1/me", {"headers": auth}),
            ("GET", "/v1/me/vitals", {"headers": auth}),
            ("GET", "/v1/me/vitals/heart_rate", {"headers": auth}),
            ("GET", "/v1/me/summary", {"headers": auth}),
            ("GET", "/v1/me/daily/heart_rate", {"headers": auth}),
            ("GET", "/v1/me/export", {"headers": auth}),
            ("GET", "/v1/me/access-log", {"headers": auth})]:
        status, headers, _ = await _call(api, method, path, **kwargs)
        assert status == 200, (path, status)
        assert headers.get("Cache-Control") == "no-store", path


async def test_cors_is_off_unless_configured(api) -> None:  # type: ignore[no-untyped-def]
    status, headers, _ = await _call(api, "GET", "/healthz", headers={"Origin": APP_ORIGIN})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await _call(api, "OPTIONS", "/v1/auth/login", headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"})
    assert status >= 400 and "Access-Control-Allow-Origin" not in headers
    _secure(headers, "preflight")


async def test_configured_cors_answers_the_exact_origins_only(core, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    async with serve(core, pki, cors_origins=(APP_ORIGIN,)) as server:
        client = await server.client()
        status, headers, _ = await _call(client, "OPTIONS", "/v1/auth/login", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
        assert "Access-Control-Allow-Credentials" not in headers  # bearer tokens, no cookies
        assert "Origin" in headers["Vary"]
        _secure(headers, "preflight")
        status, headers, _ = await _call(client, "GET", "/healthz",
                                         headers={"Origin": APP_ORIGIN})
        assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "Origin" in headers["Vary"]
        for other in ("https://evil.example", APP_ORIGIN + ".evil.example",
                      APP_ORIGIN.replace("https", "http"), "null"):
            status, headers, _ = await _call(client, "GET", "/healthz",
                                             headers={"Origin": other})
            assert "Access-Control-Allow-Origin" not in headers, other
            status, headers, _ = await _call(client, "OPTIONS", "/v1/auth/login", headers={
                "Origin": other, "Access-Control-Request-Method": "POST"})
            assert status >= 400 and "Access-Control-Allow-Origin" not in headers, other


@pytest.mark.parametrize("setting, expected", [
    ("", ()),
    ("https://app.example", ("https://app.example",)),
    (" https://a.example , https://b.example:8443 ", ("https://a.example",
                                                       "https://b.example:8443")),
])
def test_the_cors_setting_lists_exact_origins(setting: str, expected: tuple[str, ...]) -> None:
    assert cors_origins(setting) == expected


@pytest.mark.parametrize("setting", ["*", "https://*.example", "app.example",
                                     "https://app.example/", "https://app.example/path",
                                     "null", "ftp://app.example"])
def test_the_cors_setting_refuses_anything_but_exact_origins(setting: str) -> None:
    with pytest.raises(ValueError):
        cors_origins(setting)


