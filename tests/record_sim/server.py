"""A stand-in for Mon espace santé, for tests: its OAuth 2.0 / OpenID Connect server
(authorization code with PKCE S256, refresh, revocation, an ES256-signed ID token naming the
person by oid/IDPE) and its FHIR feed endpoint, which enforces the guide's rules through
``profiles.check_bundle`` and answers with the guide's refusals: 401 for a bad token, 403
when the Observation names another person than the token or the person has not consented,
422 with an OperationOutcome for the Bundle, the
Observation-Device link and the profiles. Tests can queue other answers (429, 5xx).

Served over real HTTPS with a certificate from a CA made at run time (devices/ca.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from aiohttp import web

from devices.ca import CertificateAuthority, new_key, write_private
from healthiot.localservers import free_port
from tests.record_sim.profiles import Issue, check_bundle

CODE_TTL_S = 60.0


@dataclass(frozen=True)
class Person:
    oid: str
    idpe: str


@dataclass
class _Grant:
    person: Person
    expires: float


@dataclass
class RecordSimulator:
    client_id: str
    client_secret: str
    redirect_uri: str
    root_oid: str  # the OID the record knows healthiot by
    access_ttl_s: float = 300.0
    base_url: str = ""
    signer: Any = field(default_factory=new_key)
    user: Person | None = None  # who signs in at /authorize
    consent: dict[str, bool] = field(default_factory=dict)  # idpe -> writing consented
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    access: dict[str, _Grant] = field(default_factory=dict)
    refresh: dict[str, Person] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    forced: deque[tuple[int, dict[str, Any] | None, dict[str, str]]] = field(
        default_factory=deque)
    created: dict[str, str] = field(default_factory=dict)  # ifNoneExist key -> type
    received: Counter[str] = field(default_factory=Counter)  # posts per Observation key
    accepted: list[dict[str, Any]] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    refreshes: int = 0

    # -- what a test does to the record --------------------------------------------------
    def expire_access_tokens(self) -> None:
        for grant in self.access.values():
            grant.expires = 0.0

    def forget_tokens(self) -> None:
        """The record drops every grant (as after the patient withdrew it there)."""
        self.access.clear()
        self.refresh.clear()

    def observations(self) -> list[dict[str, Any]]:
        return [e["resource"] for b in self.accepted for e in b["entry"]
                if e["resource"]["resourceType"] == "Observation"]

    # -- the application -----------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_post("/revoke", self._revoke)
        app.router.add_post("/fhir", self._fhir)
        return app

    async def _discovery(self, _: web.Request) -> web.Response:
        b = self.base_url
        return web.json_response({
            "issuer": b, "authorization_endpoint": f"{b}/authorize",
            "token_endpoint": f"{b}/token", "revocation_endpoint": f"{b}/revoke",
            "jwks_uri": f"{b}/jwks", "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "id_token_signing_alg_values_supported": ["ES256"]})

    async def _jwks(self, _: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.signer.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": "sim-1", "use": "sig",
                                            "alg": "ES256"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id or q.get("redirect_uri") != self.redirect_uri:
            return web.Response(status=400, text="unknown client or redirect URI")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or \
                not q.get("code_challenge") or not q.get("state") or not q.get("nonce"):
            return web.Response(status=400, text="code flow with PKCE S256, state, nonce")
        if self.user is None:
            raise web.HTTPFound(f"{self.redirect_uri}?" + urlencode(
                {"error": "access_denied", "state": q["state"]}))
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"challenge": q["code_challenge"], "nonce": q["nonce"],
                            "person": self.user, "expires": time.time() + CODE_TTL_S}
        raise web.HTTPFound(f"{self.redirect_uri}?" + urlencode({"code": code,
                                                                "state": q["state"]}))

    def _client_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        user, password = unquote(user), unquote(password)
        return user == self.client_id and secrets.compare_digest(password,
                                                                 self.client_secret)

    async def _token(self, request: web.Request) -> web.Response:
        if not self._client_ok(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(str(form.get("code")), None)  # single use
            verifier = str(form.get("code_verifier", ""))
            challenge = base64.urlsafe_b64encode(
                hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if grant is None or grant["expires"] < time.time() or \
                    challenge != grant["challenge"] or \
                    form.get("redirect_uri") != self.redirect_uri:
                return web.json_response({"error": "invalid_grant"}, status=400)
            return web.json_response(self._issue(grant["person"], grant["nonce"]))
        if form.get("grant_type") == "refresh_token":
            person = self.refresh.pop(str(form.get("refresh_token")), None)  # rotated
            if person is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            self.refreshes += 1
            return web.json_response(self._issue(person, None))
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    def _issue(self, person: Person, nonce: str | None) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = _Grant(person, time.time() + self.access_ttl_s)
        self.refresh[refresh] = person
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": int(self.access_ttl_s), "refresh_token": refresh}
        if nonce is not None:
            now = int(time.time())
            body["id_token"] = jwt.encode(
                {"iss": self.base_url, "aud": self.client_id, "sub": f"sub-{person.idpe}",
                 "iat": now, "exp": now + 300, "nonce": nonce, "idpe": person.idpe,
                 "idpe_oid": person.oid}, self.signer, algorithm="ES256",
                headers={"kid": "sim-1"})
        return body

    async def _revoke(self, request: web.Request) -> web.Response:
        if not self._client_ok(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str((await request.post()).get("token", ""))
        self.revoked.append(token)
        self.access.pop(token, None)
        self.refresh.pop(token, None)
        return web.Response(status=200)  # RFC 7009: 200 even for an unknown token

    async def _fhir(self, request: web.Request) -> web.Response:
        response = await self._fhir_answer(request)
        self.answers[response.status] += 1
        return response

    async def _fhir_answer(self, request: web.Request) -> web.Response:
        if self.forced:
            status, body, headers = self.forced.popleft()
            return web.json_response(body, status=status, headers=headers)
        header = request.headers.get("Authorization", "")
        grant = self.access.get(header[7:]) if header.startswith("Bearer ") else None
        if grant is None or grant.expires < time.time():
            return web.Response(status=401)
        try:
            bundle = await request.json()
        except ValueError:
            bundle = None
        issues = check_bundle(bundle, self.root_oid)
        if issues:
            return _outcome(422, issues)
        obs = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Observation")
        subject = obs["subject"]["identifier"]
        if subject != {"system": f"urn:oid:{grant.person.oid}", "value": grant.person.idpe}:
            return _outcome(403, [Issue("idPe requested do not match authorized idPe.",
                                        "forbidden", "idPe requested do not match "
                                                     "authorized idPe.")])
        if not self.consent.get(grant.person.idpe, True):
            return _outcome(403, [Issue("Consent not given, access refused.", "forbidden",
                                        "Consent not given, access refused.")])
        answers = []
        for entry in bundle["entry"]:
            key = entry["request"].get("ifNoneExist") or entry["fullUrl"]
            if entry["resource"]["resourceType"] == "Observation":
                self.received[key] += 1
            known = key in self.created
            self.created[key] = entry["resource"]["resourceType"]
            answers.append({"response": {"status": "200 OK" if known else "201 Created",
                                         "location": f"{entry['request']['url']}/{key}"}})
        self.accepted.append(bundle)
        return web.json_response({"resourceType": "Bundle", "type": "transaction-response",
                                  "entry": answers}, content_type="application/fhir+json")


def _outcome(status: int, issues: list[Issue]) -> web.Response:
    return web.json_response({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": i.code, "details": {"text": i.message},
         "diagnostics": i.diagnostics} for i in issues]}, status=status,
        content_type="application/fhir+json")


@contextlib.asynccontextmanager
async def serve(sim: RecordSimulator, directory: Path) -> AsyncIterator[Path]:
    """Serve ``sim`` over HTTPS on a free port; yields the CA file that trusts it. The
    keys are made here, in ``directory``, and never leave the test run."""
    ca = CertificateAuthority.load_or_create(directory / "record-ca")
    key_pem, cert_pem = ca.issue_server(["127.0.0.1"])
    write_private(directory / "record.key", key_pem)
    (directory / "record.pem").write_bytes(cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / "record.pem", directory / "record.key")
    port = free_port()
    sim.base_url = f"https://127.0.0.1:{port}"
    runner = web.AppRunner(sim.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield ca.ca_file
    finally:
        await runner.cleanup()
