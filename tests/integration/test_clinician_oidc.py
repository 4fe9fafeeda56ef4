"""Clinician sign-in through an OpenID Connect provider, against a local test issuer shaped
like Pro Santé Connect (discovery document, JWKS, RS256 ID tokens), with a real HTTPS
client: every ID token carries a nonce the API issued, good for one sign-in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from api.app import create_app
from api.oidc import OidcConfig, OidcVerifier
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from healthiot.localservers import free_port
from storage.clinicians import Clinicians
from tests.conftest import Pki
from tests.integration.https import https
from tests.integration.test_clinician_access import rpps_number

CLIENT_ID = "healthiot-test"


class Issuer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [jwk | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def id_token(self, **overrides: Any) -> str:
        now = int(time.time())
        rpps = rpps_number(7)
        claims = {"iss": self.url, "aud": CLIENT_ID, "sub": "psc-subject-1", "iat": now,
                  "exp": now + 300, "acr": "eidas1", "SubjectNameID": f"8{rpps}",
                  "given_name": "Claire", "family_name": "Durand",
                  "SubjectRefPro": {"exercices": [{"codeProfession": "10"}]}} | overrides
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    port = free_port()
    state = Issuer(f"http://127.0.0.1:{port}")
    app = web.Application()

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({"issuer": state.url, "jwks_uri": f"{state.url}/jwks"})

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(state.jwks())

    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    await runner.cleanup()


@pytest.fixture
async def client(core, issuer: Issuer, pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    async with aiohttp.ClientSession() as session:
        oidc = OidcVerifier(OidcConfig(issuer.url, CLIENT_ID), session)
        app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                                 core.patients, core.audit, tokens, oidc))
        async with https(app, pki) as server:
            yield await server.client()


async def _sign_in(client: aiohttp.ClientSession, token: str) -> aiohttp.ClientResponse:
    resp = await client.post("/v1/clinicians/oidc", json={"id_token": token})
    await resp.read()
    return resp


async def _nonce(client: aiohttp.ClientSession) -> str:
    async with client.post("/v1/clinicians/oidc/nonce") as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        nonce: str = (await resp.json())["nonce"]
        return nonce


async def _token(client: aiohttp.ClientSession, issuer: Issuer, **overrides: Any) -> str:
    """An ID token as the provider would return it for a nonce this API issued."""
    return issuer.id_token(**({"nonce": await _nonce(client)} | overrides))


async def test_a_valid_id_token_gives_a_clinician_session(client, issuer: Issuer) -> None:  # type: ignore[no-untyped-def]
    resp = await _sign_in(client, await _token(client, issuer))
    assert resp.status == 200, await resp.text()
    access = (await resp.json())["access_token"]
    resp = await client.get("/v1/clinician/patients", headers={"Authorization": f"Bearer {access}"})
    assert resp.status == 200 and (await resp.json()) == {"patients": []}
    # A second sign-in finds the same account.
    again = await (await _sign_in(client, await _token(client, issuer))).json()
    again = again["access_token"]
    sub = jwt.decode(again, options={"verify_signature": False})["sub"]
    assert sub == jwt.decode(access, options={"verify_signature": False})["sub"]


@pytest.mark.parametrize("overrides", [
    {"aud": "someone-else"},
    {"iss": "https://evil.example"},
    {"exp": int(time.time()) - 60},
    {"exp": None},
    {"acr": "eidas0"},
    {"nonce": None},
    {"nonce": "a nonce this API never issued"},
    {"nonce": 12345},
])
async def test_tokens_the_provider_did_not_mean_for_us_are_refused(client, issuer, overrides):  # type: ignore[no-untyped-def]
    resp = await _sign_in(client, await _token(client, issuer, **overrides))
    assert resp.status == 401


async def test_forged_tokens_are_refused(client, issuer: Issuer) -> None:  # type: ignore[no-untyped-def]
    good = await _token(client, issuer)
    header, payload, _ = good.split(".")
    unsigned = jwt.encode(jwt.decode(good, options={"verify_signature": False}), key=None,
                          algorithm="none")
    assert (await _sign_in(client, unsigned)).status == 401
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(jwt.decode(good, options={"verify_signature": False}), other,
                        algorithm="RS256", headers={"kid": issuer.kid})
    assert (await _sign_in(client, forged)).status == 401
    assert (await _sign_in(client, f"{header}.{payload}.")).status == 401


async def test_a_profession_without_medical_secrecy_is_refused(client, issuer: Issuer) -> None:  # type: ignore[no-untyped-def]
    token = await _token(client, issuer,
                         SubjectRefPro={"exercices": [{"codeProfession": "99"}]})
    assert (await _sign_in(client, token)).status == 401
    # An RPPS number with a wrong check digit:
    token = await _token(client, issuer, SubjectNameID="812345678901")
    assert (await _sign_in(client, token)).status == 403


def _subject_of(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["sub"])


async def test_an_account_made_by_an_administrator_is_linked_on_first_sign_in(  # type: ignore[no-untyped-def]
        client, issuer: Issuer, core) -> None:
    """The provider vouches for the RPPS number: the sign-in finds the existing account
    (and the consents patients gave it) instead of failing on the duplicate number."""
    existing = await Clinicians(core.pool, core.keyring).create(
        rpps=rpps_number(7), profession="physician", display_name="Dr Durand",
        username="durand", password_hash="$argon2id$placeholder",
        totp_secret=b"s" * 20)
    resp = await _sign_in(client, await _token(client, issuer))
    assert resp.status == 200, await resp.text()
    assert _subject_of((await resp.json())["access_token"]) == f"clinician:{existing.id}"
    bound = await core.pool.fetchval("SELECT oidc_subject FROM clinicians WHERE id = $1",
                                     existing.id)
    assert bound == "psc-subject-1"
    assert await core.pool.fetchval("SELECT count(*) FROM clinicians") == 1
    # And again: the same account, now through its subject.
    again = await _sign_in(client, await _token(client, issuer))
    assert _subject_of((await again.json())["access_token"]) == f"clinician:{existing.id}"


async def test_an_rpps_bound_to_another_subject_is_a_readable_conflict(  # type: ignore[no-untyped-def]
        client, issuer: Issuer, core) -> None:
    assert (await _sign_in(client, await _token(client, issuer))).status == 200
    resp = await _sign_in(client, await _token(client, issuer, sub="psc-subject-2"))
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert "already bound to another" in problem["detail"]
    # The same subject now vouched for with another number is refused too.
    resp = await _sign_in(client, await _token(client, issuer,
                                               SubjectNameID=f"8{rpps_number(8)}"))
    assert resp.status == 409
    assert "another RPPS number" in (await resp.json())["detail"]
    rows = await core.pool.fetch("SELECT rpps, oidc_subject FROM clinicians")
    assert [(r["rpps"], r["oidc_subject"]) for r in rows] == [(rpps_number(7),
                                                               "psc-subject-1")]


async def test_concurrent_first_sign_ins_make_one_account(client, issuer, core) -> None:  # type: ignore[no-untyped-def]
    tokens = [await _token(client, issuer) for _ in range(8)]
    answers = await asyncio.gather(*[_sign_in(client, token) for token in tokens])
    assert [a.status for a in answers] == [200] * 8, [await a.text() for a in answers]
    subjects = {_subject_of((await a.json())["access_token"]) for a in answers}
    assert len(subjects) == 1
    assert await core.pool.fetchval("SELECT count(*) FROM clinicians") == 1


async def test_an_id_token_is_good_for_one_sign_in(client, issuer: Issuer) -> None:  # type: ignore[no-untyped-def]
    token = await _token(client, issuer)
    assert (await _sign_in(client, token)).status == 200
    replayed = await _sign_in(client, token)  # still valid for minutes: refused anyway
    assert replayed.status == 401
    assert "nonce" in (await replayed.json())["detail"]


async def test_an_expired_nonce_is_refused(client, issuer: Issuer, core) -> None:  # type: ignore[no-untyped-def]
    token = await _token(client, issuer)
    await core.pool.execute("UPDATE oidc_nonces SET expires_at = now() - interval '1 second'")
    assert (await _sign_in(client, token)).status == 401


async def test_two_sign_ins_racing_with_one_token_give_one_session(client, issuer) -> None:  # type: ignore[no-untyped-def]
    token = await _token(client, issuer)
    answers = await asyncio.gather(*[_sign_in(client, token) for _ in range(4)])
    assert sorted(a.status for a in answers) == [200, 401, 401, 401]
