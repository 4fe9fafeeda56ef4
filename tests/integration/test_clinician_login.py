"""Clinician sign-in with password and one-time code, through the real application and
PostgreSQL: the code is single-use, wrong guesses are limited (429) and never lock the
clinician out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import passwords, totp
from api.account_routes import GUARD
from api.app import create_app
from api.limits import Limits
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from storage.clinicians import Clinicians
from tests.integration.test_clinician_access import rpps_number

PASSPHRASE = "a long clinician passphrase"
WINDOW_S = 600.0


@dataclass
class Clock:
    """The sign-in guard's clock, moved by the test: no race with slow password hashing."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    client: TestClient[Any, Any]
    clinician_id: str
    secret: bytes
    clock: Clock


@pytest.fixture
async def setup(core) -> AsyncIterator[Setup]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    limits = Limits(failures_per_account_and_client=3, failure_window_s=WINDOW_S,
                    requests_per_second=1000, request_burst=1000)
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens, limits=limits))
    clock = Clock()
    app[GUARD].clock = clock
    secret = totp.new_secret()
    clinician = await Clinicians(core.pool, core.keyring).create(
        rpps=rpps_number(3), profession="nurse", display_name="M. Petit", username="petit",
        password_hash=await asyncio.to_thread(passwords.hash_password, PASSPHRASE),
        totp_secret=secret)
    async with TestClient(TestServer(app)) as client:
        yield Setup(client, str(clinician.id), secret, clock)


def code(secret: bytes, offset_steps: int = 0) -> str:
    return totp.code_at(secret, int(time.time() // totp.STEP_S) + offset_steps)


async def _login(s: Setup, password: str = PASSPHRASE, otp: str | None = None,
                 username: str = "petit") -> aiohttp.ClientResponse:
    return await s.client.post("/v1/clinicians/login", json={
        "username": username, "password": password,
        "totp": code(s.secret) if otp is None else otp})


async def test_password_and_code_give_a_session_good_for_health_data(setup: Setup) -> None:
    resp = await _login(setup, username="Petit")  # usernames are case-insensitive
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["second_factor"] is True and body["refresh_token"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == f"clinician:{setup.clinician_id}"
    resp = await setup.client.get("/v1/clinician/patients", headers={
        "Authorization": f"Bearer {body['access_token']}"})
    assert resp.status == 200 and await resp.json() == {"patients": []}


async def test_a_wrong_code_or_password_is_refused_alike(setup: Setup) -> None:
    wrong_code = str((int(code(setup.secret)) + 1) % 1_000_000).zfill(6)
    answers = [await _login(setup, otp=wrong_code),
               await _login(setup, password="not the passphrase at all"),
               await _login(setup, username="nobody")]
    assert [a.status for a in answers] == [401, 401, 401]
    details = {(await a.json())["detail"] for a in answers}
    assert len(details) == 1  # which factor failed, or whether the account exists: not said
    assert all(a.content_type == "application/problem+json" for a in answers)


async def test_a_code_is_single_use(setup: Setup) -> None:
    used = code(setup.secret)
    assert (await _login(setup, otp=used)).status == 200
    assert (await _login(setup, otp=used)).status == 401  # replayed
    # An earlier code still inside the drift window is older than the one used: refused.
    assert (await _login(setup, otp=code(setup.secret, -1))).status == 401
    assert (await _login(setup, otp=code(setup.secret, 1))).status == 200


async def test_brute_force_is_limited_without_locking_the_clinician_out(setup: Setup) -> None:
    statuses = [(await _login(setup, password=f"guess number {i:02d}")).status
                for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    # Past the limit even the right answers wait, and the code is not spent meanwhile.
    blocked = await _login(setup)
    assert blocked.status == 429
    assert int(blocked.headers["Retry-After"]) >= 1
    setup.clock.now += WINDOW_S + 1  # the window passes: slowed down, never locked out
    assert (await _login(setup)).status == 200
