"""schemathesis against the real application: generated requests for every documented
operation, as a patient with two factors; no server error, and every answer (status,
content type, body) as the OpenAPI document says.

The application runs in a thread with its own event loop and database pool, because
schemathesis calls it synchronously.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from api import totp
from api.app import create_app
from api.limits import Limits
from api.openapi import document
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from healthiot.localservers import free_port
from healthiot.services import open_core

EXAMPLES_PER_OPERATION = 25
NOT_FUZZED = {("POST", "/v1/auth/logout")}  # it would end the session the others use
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
# Rules no JSON schema can state, which data valid by the schema can still break: for these
# operations, and only for them, one refusal code is expected besides what schemathesis
# accepts for valid data (2xx, 401, 403, 404, 409, 429).
SEMANTIC_REFUSALS = {
    ("GET", "/v1/me/vitals/{metric}"): (400, "from before to, at most a year apart; device "
                                             "only with raw samples"),
    ("GET", "/v1/me/summary"): (400, "from before to, at most a year apart"),
    ("GET", "/v1/me/daily/{metric}"): (400, "from not after to, at most MAX_DAYS days"),
    ("GET", "/v1/clinician/patients/{patient_id}/summary"): (400, "from before to"),
    ("GET", "/v1/clinician/patients/{patient_id}/charts/{metric}"): (400, "from before to"),
    ("GET", "/fhir/Observation"): (400, "a FHIR date search within 92 days"),
    ("POST", "/v1/me/consents"): (422, "a known clinician, a metric or category, a period "
                                       "in order, an expiry within a year"),
    ("GET", "/v1/record-link/callback"): (400, "state and code from a sign-in started here, "
                                              "or the record's error"),
    ("PUT", "/v1/me/timezone"): (422, "an IANA zone name, an instant not in the future"),
    ("PUT", "/v1/me/sources/{metric}"): (422, "distinct devices of mine"),
    ("POST", "/v1/me/devices/pair"): (422, "a serial and code that match a device"),
    ("POST", "/v1/me/devices/join"): (422, "a current invitation code"),
    ("POST", "/v1/accounts"): (422, "a password neither common nor close to the username"),
}
ACCEPTED = {401, 403, 404, 409, 429}


@schemathesis.check
def valid_data_accepted_or_refused_by_a_rule(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive_data_acceptance, with the one semantic refusal of the
    operation (SEMANTIC_REFUSALS) also expected."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    code, _ = SEMANTIC_REFUSALS.get((case.method.upper(), case.operation.path), (None, ""))
    status = response.status_code
    if not (200 <= status < 300 or status in ACCEPTED or status == code):
        raise AssertionError(f"valid data refused with {status}: {response.text[:300]}")
    return None


def _serve(dsn: str, password: str, kek: Path, port: int, ready: threading.Event,
           stop: threading.Event, failure: list[BaseException]) -> None:
    async def main() -> None:
        core = await open_core(dsn, password, kek, create_kek=True)
        tokens = TokenService(new_key(), issuer="https://test", audience="test")
        app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                                 core.patients, core.audit, tokens,
                                 limits=Limits(requests_per_second=10_000,
                                               request_burst=10_000)))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()
        await core.pool.close()

    try:
        asyncio.run(main())
    except BaseException as exc:  # reported by the fixture, not lost in the thread
        failure.append(exc)
        ready.set()


@pytest.fixture
def api_url(database, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    ready, stop, failure = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=_serve, args=(database.dsn, database.password,
                                                   tmp_path / "kek.bin", port, ready, stop,
                                                   failure))
    thread.start()
    ready.wait(30)
    if failure:
        raise failure[0]
    yield f"http://127.0.0.1:{port}"
    stop.set()
    thread.join(30)


def _patient_token(base: str) -> str:
    password = "a quiet river at dawn"
    created = requests.post(f"{base}/v1/accounts", timeout=10, json={
        "username": "fuzzed", "password": password}).json()
    secret = totp.secret_from_base32(created["totp"]["secret"])
    resp = requests.post(f"{base}/v1/auth/login", timeout=10, json={
        "username": "fuzzed", "password": password,
        "totp": totp.code_at(secret, int(time.time() // totp.STEP_S))})
    token: str = resp.json()["access_token"]
    return token


def _fuzzer(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str]
            ) -> Callable[[], None]:
    """Generated requests for one operation in one mode, each answer checked."""
    semantic = (operation.method.upper(), operation.path) in SEMANTIC_REFUSALS
    checks = [*CHECKS, valid_data_accepted_or_refused_by_a_rule if semantic
              else positive_data_acceptance]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None,
              deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

    return fuzz


def test_every_operation_answers_as_documented(api_url: str) -> None:
    headers = {"Authorization": f"Bearer {_patient_token(api_url)}"}
    schema = schemathesis.openapi.from_dict(document())
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        modes = [GenerationMode.POSITIVE]
        if operation.body or operation.query or operation.path_parameters:
            modes.append(GenerationMode.NEGATIVE)  # else there is nothing to make invalid
        for mode in modes:
            try:
                _fuzzer(operation, mode, api_url, headers)()
            except (Exception, BaseExceptionGroup) as exc:  # collect all, then report
                failures.append(f"{mode.value} {operation.method.upper()} {operation.path}: "
                                f"{exc}"[:3000])
    assert not failures, "\n\n".join(failures)


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = create_app(ApiDeps(*[None] * 7))  # type: ignore[arg-type]  (routes only)
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    documented = {(m, path) for path, ops in document()["paths"].items() for m in ops}
    assert served == documented
