"""Hostile input to every route, over real HTTPS: NUL characters, unpaired surrogates,
dates at the ends of the calendar, deep nesting, huge numbers, in path parameters, query
parameters and JSON bodies. No answer is a server error; an error is always a typed
document (problem+json; an OperationOutcome under /fhir); and input a route reads that is
hostile is refused with a 4xx.

The first test replays the exact inputs of issue 18; the second lets hypothesis combine
them and their kin over every documented operation, signed in with two factors as the
patient or the clinician the route is for."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from api import passwords, totp
from api.app import create_app
from api.limits import Limits
from api.openapi import document
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from storage.clinicians import Clinicians
from tests.conftest import Pki, new_patient
from tests.integration.https import https
from tests.integration.test_clinician_access import rpps_number

NOT_SENT = {("post", "/v1/auth/logout")}  # it would end the session the others use
SOMEONE = "5d1c6a53-3d55-4b8e-9a56-0c3f3f0b7a11"  # a patient id that is nobody's


@dataclass
class Target:
    client: aiohttp.ClientSession
    patient: dict[str, str]
    clinician: dict[str, str]

    def auth(self, path: str) -> dict[str, str]:
        if path.startswith(("/v1/clinician/", "/fhir/")):
            return self.clinician
        if path.startswith(("/v1/clinicians/", "/v1/accounts", "/v1/auth/")):
            return {}
        return self.patient


async def _token(client: aiohttp.ClientSession, path: str, body: dict[str, str]) -> str:
    async with client.post(path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        token: str = (await resp.json())["access_token"]
        return token


@pytest.fixture
async def target(core, pki: Pki) -> AsyncIterator[Target]:  # type: ignore[no-untyped-def]
    tokens = TokenService(new_key(), issuer="https://test", audience="test")
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                             core.patients, core.audit, tokens,
                             limits=Limits(requests_per_second=10_000, request_burst=10_000,
                                           failures_per_client=10_000)))
    _, password, secret = await new_patient(core, "hostile.patient")
    clinician_secret = totp.new_secret()
    await Clinicians(core.pool, core.keyring).create(
        rpps=rpps_number(5), profession="physician", display_name="Dr Hostile",
        username="hostile.doctor", totp_secret=clinician_secret,
        password_hash=await asyncio.to_thread(passwords.hash_password, password))
    async with https(app, pki) as server:
        client = await server.client()
        patient = await _token(client, "/v1/auth/login", {
            "username": "hostile.patient", "password": password,
            "totp": totp.now_code(secret)})
        clinician = await _token(client, "/v1/clinicians/login", {
            "username": "hostile.doctor", "password": password,
            "totp": totp.now_code(clinician_secret)})
        yield Target(client, {"Authorization": f"Bearer {patient}"},
                     {"Authorization": f"Bearer {clinician}"})


async def _send(target: Target, method: str, url: str, body: bytes | None = None
                ) -> tuple[int, str, bytes]:
    headers = target.auth(url.split("?")[0])
    if body is not None:
        headers = headers | {"Content-Type": "application/json"}
    async with target.client.request(method, URL(url, encoded=True), data=body,
                                     headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


def _assert_typed_refusal(what: str, status: int, content_type: str, body: bytes, *,
                          must_refuse: bool) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if must_refuse:
        assert 400 <= status < 500, f"{what}: {status} {body[:300]!r}"
    if status >= 400:
        # Under /fhir an OperationOutcome, as FHIR clients expect; a problem document
        # elsewhere, and everywhere for what the HTTP parser refuses before any route.
        if content_type == "application/fhir+json":
            assert what.split(" ", 1)[1].startswith("/fhir/"), what
            assert json.loads(body)["resourceType"] == "OperationOutcome", what
        else:
            assert content_type == "application/problem+json", f"{what}: {content_type}"
            assert json.loads(body)["status"] == status, what


DEEP = 30_000
ISSUE_18 = [  # (method, url with percent-encoded query, raw body)
    ("POST", "/v1/auth/login", b"[" * DEEP),
    ("POST", "/v1/accounts", b'{"username": "' + b"a" * 3 + b'\\u0000", "password": "x"}'),
    ("POST", "/v1/auth/login",
     b'{"username": "nul\\u0000name", "password": "a quiet river at dawn"}'),
    ("POST", "/v1/auth/login",
     b'{"username": "lone\\ud800", "password": "a quiet river at dawn"}'),
    ("POST", "/v1/auth/refresh", b'{"refresh_token": "\\ud800"}'),
    ("GET", "/v1/me/vitals/heart_rate?device=watch%00one", None),
    ("GET", "/v1/me/vitals/heart_rate?device=%ED%A0%80", None),
    ("GET", "/v1/me/vitals/heart_rate?from=0001-01-01T00:00:00%2B14:00", None),
    ("GET", "/v1/me/summary?from=0001-01-01T00:00:00%2B14:00", None),
    ("GET", f"/v1/clinician/patients/{SOMEONE}/summary"
            "?from=0001-01-01T00:00:00%2B14:00", None),
    ("GET", f"/v1/clinician/patients/{SOMEONE}/charts/heart_rate"
            "?from=0001-01-01T00:00:00%2B14:00", None),
    ("GET", "/v1/me/vitals/heart_rate?to=0001-01-01T00:00:00Z", None),
    ("GET", "/v1/me/vitals/heart_rate?from=9999-12-31T23:00:00Z", None),
    ("GET", "/v1/me/daily/heart_rate?to=9999-12-31", None),
    ("GET", "/v1/me/daily/heart_rate?to=0001-01-01", None),
    ("GET", f"/fhir/Observation?patient={SOMEONE}&date=ge0001-01-01&date=le9999-12-31",
     None),
    ("GET", f"/fhir/Observation?patient={SOMEONE}&date=le0001-01-01", None),
    ("GET", f"/fhir/Observation?patient={SOMEONE}&_count=%C2%B2", None),
    ("GET", "/v1/me/access-log?before=99999999999999999999999", None),
    ("PUT", "/v1/me/timezone", b'{"zone": "Europe/Paris", "effective_from": '
                               b'"0001-01-01T00:00:00+14:00"}'),
    ("PUT", "/v1/me/timezone", b'{"zone": "Europe/Paris\\u0000"}'),
    ("POST", "/v1/me/consents", b'{"clinician_rpps": "1", "metrics": ["heart_rate"], '
                                b'"data_from": "0001-01-01T00:00:00+14:00", '
                                b'"data_to": "9999-12-31T23:59:59-14:00", '
                                b'"expires_at": "9999-12-31T23:59:59-14:00"}'),
    ("POST", "/v1/me/devices/pair", b'{"serial": "\\u0000", "pairing_code": "\\ud800"}'),
    ("PUT", "/v1/me/record-feed", b'{"enabled": true, "ins": "1e400\\u0000"}'),
    ("PUT", "/v1/me/sources/heart_rate", b'{"device_ids": ["\\u0000"]}'),
    ("POST", "/v1/me/devices/join", b'{"code": 1e400}'),
    ("POST", "/v1/me/devices/join", b'{"code": NaN}'),
    ("DELETE", "/v1/me/devices/watch%00one", None),
    ("GET", "/fhir/Device/watch%00one", None),
    ("GET", "/v1/me/devices/%ED%A0%80/users", None),
]


@pytest.mark.parametrize("method, url, body", ISSUE_18,
                         ids=[f"{m} {u[:60]}" for m, u, _ in ISSUE_18])
async def test_the_inputs_of_issue_18_are_refused_with_a_typed_4xx(
        target: Target, method: str, url: str, body: bytes | None) -> None:
    status, content_type, answer = await _send(target, method, url, body)
    _assert_typed_refusal(f"{method} {url}", status, content_type, answer, must_refuse=True)


# --- every operation, with hypothesis ---------------------------------------------------

OPERATIONS = [(method, path, op) for path, ops in document()["paths"].items()
              for method, op in ops.items() if (method, path) not in NOT_SENT]
NORMAL_PATH_VALUES = {"metric": "heart_rate", "user": "me"}
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
EXTREME_DATES = ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "0001-01-01",
                 "9999-12-31T23:59:59.999999-14:00", "9999-12-31", "9999-12-31T23:59:59Z",
                 "ge0001-01-01", "le9999-12-31", "gt9999-12-31", "lt0001-01-01",
                 "eq9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59Z"]
HUGE_NUMBERS = ["1" * 5000, "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e-400",
                str(2**64), str(-(2**63) - 1), "²", "١٢"]

text_with_nul = st.builds(lambda a, b: f"{a}\x00{b}", st.text(max_size=8), st.text(max_size=8))
text_with_surrogate = st.builds(lambda a, s, b: f"{a}{s}{b}", st.text(max_size=8),
                                st.sampled_from(SURROGATES), st.text(max_size=8))
unstorable_text = st.one_of(text_with_nul, text_with_surrogate)
odd_text = st.sampled_from(EXTREME_DATES + HUGE_NUMBERS)  # fine as text, not as a date
# (text, whether no parameter of any kind can accept it)
hostile_text = st.one_of(unstorable_text.map(lambda t: (t, True)),
                         odd_text.map(lambda t: (t, False)))
DATE_FIELDS = {"data_from", "data_to", "expires_at", "effective_from"}


def _encode(text: str) -> str:
    """Percent-encoded UTF-8, unpaired surrogates included (as a client could send)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _json_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)  # NUL and surrogates become \\u escapes


# (JSON text, whether any field must refuse it: not JSON, not a string, unstorable text)
hostile_json_value = st.one_of(
    unstorable_text.map(lambda t: (_json_text(t), True)),
    odd_text.map(lambda t: (_json_text(t), False)),
    st.sampled_from(["1" * 5000, "1e400", "-1e400", "NaN", "Infinity", str(2**64),
                     "[" * 5000 + "]" * 5000, '{"a":' * 2000 + "1" + "}" * 2000]).map(
        lambda t: (t, True)),
    st.lists(hostile_text, min_size=1, max_size=3).map(
        lambda items: ("[" + ",".join(_json_text(t) for t, _ in items) + "]",
                       any(bad for _, bad in items))))
deep_body = st.sampled_from([b"[" * DEEP, b'{"a":' * DEEP, b"[" * DEEP + b"]" * DEEP])


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    body: bytes | None
    reads_hostile: bool  # the route reads something no parameter of its kind accepts

    def __repr__(self) -> str:  # short: hypothesis prints the failing example
        body = None if self.body is None else self.body[:200]
        return f"Sent({self.method} {self.url[:300]!r}, body={body!r}, " \
               f"reads_hostile={self.reads_hostile})"


@st.composite
def requests_(draw: st.DrawFn) -> Sent:
    method, path, op = draw(st.sampled_from(OPERATIONS))
    reads_hostile = False
    url = path
    for name in re.findall(r"{(\w+)}", path):
        if draw(st.booleans()):  # no id, metric or user looks like these: all refused
            value, reads_hostile = _encode(draw(hostile_text)[0]), True
        else:
            value = NORMAL_PATH_VALUES.get(name, str(uuid.uuid4()))
        url = url.replace(f"{{{name}}}", value)
    documented = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]
    names = draw(st.lists(st.sampled_from([*documented, "unknown"]), max_size=3))
    if names:
        query = [(name, draw(hostile_text)[0]) for name in names]
        # Every documented query parameter is a date, a number, an id or a keyword: none
        # takes these; an unknown one is ignored unless it holds a NUL (a surrogate,
        # percent-encoded, is not UTF-8: the server decodes it as U+FFFD, harmless).
        reads_hostile |= any(name in documented or "\x00" in value for name, value in query)
        url += "?" + "&".join(f"{name}={_encode(value)}" for name, value in query)
    body = None
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get(
        "schema")
    if schema is not None:
        fields = list(schema.get("properties", {}))
        if draw(st.booleans()) or not fields:
            body, reads_hostile = draw(deep_body), True
        else:
            chosen = draw(st.lists(st.sampled_from(fields), min_size=1, unique=True))
            values = {f: draw(hostile_json_value) for f in chosen}
            body = ("{" + ",".join(f"{json.dumps(f)}: {v}" for f, (v, _) in values.items())
                    + "}").encode()
            reads_hostile |= any(bad or f in DATE_FIELDS for f, (_, bad) in values.items())
    return Sent(method.upper(), url, body, reads_hostile)


@given(request=requests_())
@settings(max_examples=400, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
async def test_hostile_input_to_every_route_never_gets_a_server_error(
        target: Target, request: Sent) -> None:
    status, content_type, answer = await _send(target, request.method, request.url,
                                               request.body)
    _assert_typed_refusal(f"{request.method} {request.url[:200]}", status, content_type,
                          answer, must_refuse=request.reads_hostile)


def test_every_operation_is_covered() -> None:
    sent = {(m, p) for m, p, _ in OPERATIONS} | NOT_SENT
    documented = {(m, p) for p, ops in document()["paths"].items() for m in ops}
    assert sent == documented


