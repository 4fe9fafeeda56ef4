"""Sign-in and account-creation limits, with real HTTPS clients from several loopback
addresses: a wrong second factor always counts, an attacker's address cannot lock the user
out from theirs, account creation is limited and does not tell which names exist."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from api import totp
from api.account_routes import GUARD
from api.app import create_app
from api.limits import Limits
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from tests.conftest import Pki
from tests.integration.https import Https, https

PASSWORD = "a quiet river at dawn"
USER = "127.0.0.1"  # the real user's address
ATTACKERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    server: Https
    clock: Clock

    async def post(self, path: str, body: dict[str, Any], address: str = USER
                   ) -> aiohttp.ClientResponse:
        client = await self.server.client(address)
        async with client.post(path, json=body) as resp:
            await resp.read()
            return resp


LIMITS = Limits(failures_per_account_and_client=5, failures_per_account=8,
                code_failures_per_account=5, accounts_per_client=3,
                requests_per_second=1000, request_burst=1000)


@pytest.fixture
async def api(core, pki: Pki) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens, limits=LIMITS))
    clock = Clock()
    app[GUARD].clock = clock  # moved by the test: slow hashing cannot race a window
    async with https(app, pki) as server:
        yield Api(server, clock)


def code(secret: bytes, offset_steps: int = 0) -> str:
    return totp.code_at(secret, int(time.time() // totp.STEP_S) + offset_steps)


def wrong(secret: bytes) -> str:
    """A code that is current for no step of the drift window."""
    current = {code(secret, k) for k in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in current)


async def register(api: Api, username: str, address: str = USER) -> bytes:
    resp = await api.post("/v1/accounts", {"username": username, "password": PASSWORD},
                          address)
    assert resp.status == 201
    created = await resp.json()
    return totp.secret_from_base32(created["totp"]["secret"])


def login(username: str, password: str = PASSWORD, otp: str | None = None
          ) -> dict[str, str]:
    return {"username": username, "password": password} | ({"totp": otp} if otp else {})


async def test_a_password_only_sign_in_does_not_clear_the_count_of_wrong_codes(
        api: Api) -> None:
    secret = await register(api, "alternating")
    statuses = []
    for _ in range(6):  # the attacker knows the password, not the code
        statuses.append((await api.post("/v1/auth/login",
                                        login("alternating", otp=wrong(secret)))).status)
        assert (await api.post("/v1/auth/login", login("alternating"))).status == 200
    assert statuses == [401] * 5 + [429]
    # Even the right code waits now, and only the window (not a password) ends the wait.
    blocked = await api.post("/v1/auth/login", login("alternating", otp=code(secret)))
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) >= 1
    api.clock.now += LIMITS.failure_window_s + 1
    ok = await api.post("/v1/auth/login", login("alternating", otp=code(secret)))
    assert ok.status == 200


async def test_wrong_codes_from_many_addresses_count_together(api: Api) -> None:
    secret = await register(api, "spread")
    statuses = [(await api.post("/v1/auth/login", login("spread", otp=wrong(secret)),
                                address)).status
                for address in [*ATTACKERS, *ATTACKERS]]
    assert statuses == [401] * 5 + [429]


async def test_wrong_passwords_from_one_address_do_not_lock_the_user_out_of_another(
        api: Api) -> None:
    secret = await register(api, "target")
    statuses = [(await api.post("/v1/auth/login", login("target", "wrong password guess"),
                                ATTACKERS[0])).status for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    ok = await api.post("/v1/auth/login", login("target", otp=code(secret)))
    assert ok.status == 200, await ok.text()
    assert (await api.post("/v1/auth/login", login("target"))).status == 200


async def test_past_the_account_budget_a_password_alone_waits_but_password_and_code_pass(
        api: Api) -> None:
    secret = await register(api, "besieged")
    for address in ATTACKERS:  # three addresses, each under its own limit of five
        for _ in range(3):
            await api.post("/v1/auth/login", login("besieged", "wrong password guess"),
                           address)
    # Nine wrong passwords in all, past the account's budget of eight.
    alone = await api.post("/v1/auth/login", login("besieged"))
    assert alone.status == 429
    # A guesser past the budget learns nothing from a right password without the code...
    guess = await api.post("/v1/auth/login", login("besieged", otp=wrong(secret)),
                           ATTACKERS[0])
    refused = await api.post("/v1/auth/login", login("besieged", "another wrong one",
                                                     otp=wrong(secret)), ATTACKERS[1])
    assert guess.status == refused.status == 401
    assert (await guess.json())["detail"] == (await refused.json())["detail"]
    # ...and the real user, who has the code, signs in.
    ok = await api.post("/v1/auth/login", login("besieged", otp=code(secret)))
    assert ok.status == 200, await ok.text()


async def test_account_creation_is_limited_per_address(api: Api) -> None:
    for n in range(3):
        await register(api, f"spam{n}", ATTACKERS[0])
    resp = await api.post("/v1/accounts", {"username": "spam3", "password": PASSWORD},
                          ATTACKERS[0])
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert resp.content_type == "application/problem+json"
    await register(api, "someone.else", USER)  # another address is not held up
    api.clock.now += LIMITS.creation_window_s + 1
    await register(api, "spam3", ATTACKERS[0])


async def test_creating_a_taken_username_answers_as_a_free_one_would(api: Api) -> None:
    secret = await register(api, "alice")
    taken = await api.post("/v1/accounts", {"username": "alice",
                                            "password": "another long passphrase"})
    free = await api.post("/v1/accounts", {"username": "bob", "password": PASSWORD})
    assert taken.status == free.status == 201
    assert taken.content_type == free.content_type
    taken_body, free_body = await taken.json(), await free.json()
    assert taken_body.keys() == free_body.keys()
    assert taken_body["totp"].keys() == free_body["totp"].keys()
    assert taken_body["username"] == "alice"
    # Nothing was changed: the owner still signs in, the second comer cannot.
    ok = await api.post("/v1/auth/login", login("alice", otp=code(secret)))
    assert ok.status == 200
    impostor = await api.post("/v1/auth/login", login("alice", "another long passphrase"))
    assert impostor.status == 401
