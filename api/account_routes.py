"""Patient accounts: registration with TOTP enrolment, sign-in in one or two steps, rotating
refresh tokens, logout, and the GDPR rights (export, erasure)."""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from typing import Any, Protocol

import asyncpg
from aiohttp import web
from msgspec import UNSET

from api import credentials, passwords, totp
from api.bodies import USERNAME, Erasure, Login, NewAccount, Refresh
from api.consent_routes import who_is
from api.device_routes import REVOKER
from api.fhir_routes import observations
from api.limits import SignInGuard, TooMany, too_many
from api.problems import Problem
from api.requests import DEPS, bearer_claims, patient_of, read_body
from storage import device_refs
from storage.clinicians import Clinicians
from storage.consents import Consents
from storage.erasure import erase_patient
from storage.segments import Samples
from storage.sessions import RefreshRefused, Sessions
from vitals import fhir
from vitals.catalogue import METRICS

GUARD = web.AppKey("sign_in_guard", SignInGuard)
TOTP_ISSUER = "healthiot"


def register(app: web.Application) -> None:
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_post("/v1/auth/refresh", refresh)
    app.router.add_post("/v1/auth/logout", logout)
    app.router.add_get("/v1/me", me)
    app.router.add_delete("/v1/me", erase_me)
    app.router.add_get("/v1/me/export", export_me)


async def create_account(request: web.Request) -> web.Response:
    """Register; the answer holds the TOTP secret, shown this once, to put in an
    authenticator app. The first sign-in with a code confirms it.

    A username already taken answers exactly as a free one would (201, a fresh id and
    secret that lead nowhere), so that registration does not tell which accounts exist:
    the first sign-in then fails, and the person picks another name. Each address may
    create a few accounts an hour (each costs an argon2 hash): 429 past that."""
    deps = request.app[DEPS]
    body = await read_body(request, NewAccount)
    username = body.username.strip().lower()
    if not USERNAME.match(username):
        raise Problem(422, "a username is 3 to 64 characters: letters, digits, . _ @ + -")
    try:
        passwords.check_policy(body.password, username=username)
    except passwords.PasswordRefused as exc:
        raise Problem(422, str(exc)) from None
    try:
        request.app[GUARD].creation(client_of(request))
    except TooMany as exc:
        return too_many(exc)
    secret = totp.new_secret()
    password_hash = await passwords.hash_password_async(body.password)
    try:
        patient = await deps.patients.create(username, password_hash, secret,
                                             totp_confirmed=False)
    except asyncpg.UniqueViolationError:
        patient_id = uuid.uuid4()  # a decoy: nothing is stored under it
    else:
        patient_id = patient.id
        await deps.audit.record(actor=f"patient:{patient.id}", patient_id=patient.id,
                                action="register", resource="account", outcome="ok",
                                client=request.remote)
    encoded = totp.secret_base32(secret)
    return web.json_response({
        "patient_id": str(patient_id), "username": username,
        "totp": {"secret": encoded, "uri": totp.provisioning_uri(encoded, username,
                                                                 TOTP_ISSUER)}}, status=201)


async def issue_session(request: web.Request, subject: str, methods: list[str]
                        ) -> web.Response:
    """A new session: an access token bound to it and its first refresh token."""
    deps = request.app[DEPS]
    opened = await Sessions(deps.pool).open(subject, methods)
    return _tokens(request, subject, methods, opened.session_id, opened.refresh_token)


def _tokens(request: web.Request, subject: str, methods: list[str], session_id: uuid.UUID,
            refresh_token: str) -> web.Response:
    deps = request.app[DEPS]
    access = deps.tokens.issue(subject, methods=methods, session_id=str(session_id))
    return web.json_response({"access_token": access, "token_type": "Bearer",
                              "expires_in": deps.tokens.ttl_s, "refresh_token": refresh_token,
                              "second_factor": "otp" in methods or "mfa" in methods})


def client_of(request: web.Request) -> str:
    return request.remote or "unknown"


class StaffAccounts(Protocol):
    """Clinicians' or operators' accounts: what a two-factor sign-in reads."""

    async def by_username(self, username: str) -> Any: ...
    async def totp_secret(self, account_id: uuid.UUID) -> bytes: ...
    async def accept_totp_step(self, account_id: uuid.UUID, step: int) -> bool: ...


async def staff_login(request: web.Request, subject: str, accounts: StaffAccounts,
                      username: str, password: str, code: str) -> web.Response:
    """Password and one-time code, both required (a professional has no one-factor
    session), under the sign-in guard; a session for ``<subject><id>`` ("clinician:")."""
    username = username.strip().lower()
    found = await accounts.by_username(username)
    try:
        ok = await credentials.sign_in(
            request.app[GUARD], f"{subject}{username}", client_of(request),
            found.password_hash if found else None, password, code,
            functools.partial(accounts.totp_secret, found.id) if found else None,
            functools.partial(accounts.accept_totp_step, found.id) if found else None)
    except TooMany as exc:
        return too_many(exc)
    if found is None or not ok:
        raise Problem(401, "unknown username, wrong password or wrong code")
    return await issue_session(request, f"{subject}{found.id}", ["pwd", "otp"])


async def login(request: web.Request) -> web.Response:
    """Password, and the code of the authenticator app. Without the code the token is good
    for the account but not for health data (403 there)."""
    deps = request.app[DEPS]
    body = await read_body(request, Login)
    totp_code = None if body.totp is UNSET else body.totp
    username = body.username.strip().lower()
    patient = await deps.patients.by_username(username)
    try:
        ok = await credentials.sign_in(
            request.app[GUARD], username, client_of(request),
            patient.password_hash if patient else None, body.password, totp_code,
            functools.partial(deps.patients.totp_secret, patient.id) if patient else None,
            functools.partial(deps.patients.accept_totp_step, patient.id) if patient else None)
    except TooMany as exc:
        return too_many(exc)
    if patient is not None:
        await deps.audit.record(actor=f"patient:{patient.id}", patient_id=patient.id,
                                action="login",
                                resource="session", outcome="ok" if ok else "refused",
                                client=request.remote)
    if patient is None or not ok:
        raise Problem(401, "unknown username, wrong password or wrong code")
    methods = ["pwd"] if totp_code is None else ["pwd", "otp"]
    return await issue_session(request, str(patient.id), methods)


async def refresh(request: web.Request) -> web.Response:
    """Spend a refresh token for a new pair. A token spent twice ends its session."""
    deps = request.app[DEPS]
    body = await read_body(request, Refresh)
    try:
        rotated = await Sessions(deps.pool).rotate(body.refresh_token)
    except RefreshRefused as exc:
        raise Problem(401, str(exc)) from None
    return _tokens(request, rotated.subject, rotated.methods, rotated.session_id,
                   rotated.refresh_token)


async def logout(request: web.Request) -> web.Response:
    """End this session: its refresh token and its access tokens stop working now."""
    deps = request.app[DEPS]
    claims = bearer_claims(request, health_data=False)
    if claims.session_id is None:
        raise Problem(400, "this token has no session to end")
    await Sessions(deps.pool).revoke(uuid.UUID(claims.session_id), "logout")
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=False))
    patient = await deps.patients.by_id(patient_id)
    if patient is None:
        raise Problem(401, "this account no longer exists")
    return web.json_response({"patient_id": str(patient.id), "username": patient.username,
                              "totp_confirmed": patient.totp_confirmed})


async def erase_me(request: web.Request) -> web.Response:
    """Erase my account and all my data. Asks for the password and a code again: a stolen
    access token alone cannot destroy an account."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    body = await read_body(request, Erasure)
    patient = await deps.patients.by_id(patient_id)
    ok = patient is not None and await credentials.check_password(patient.password_hash,
                                                                  body.password)
    if ok:
        ok = await credentials.check_code(
            await deps.patients.totp_secret(patient_id), body.totp,
            functools.partial(deps.patients.accept_totp_step, patient_id))
    if not ok:
        raise Problem(403, "confirm with your password and a current code")
    owned = [d.id for d in await deps.registry.for_patient(patient_id) if d.role == "owner"]
    if deps.record is not None:  # revoke the record's tokens while their key still exists
        await deps.record.unlink(patient_id)
    segments = await erase_patient(deps.pool, deps.keyring, patient_id, f"patient:{patient_id}")
    # Erasure revoked the devices in the registry; the broker must know too: a current CRL
    # and every live session ended, as when a device is unpaired.
    for device_id in owned:
        await request.app[REVOKER].enforce(device_id)
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="erase",
                            resource="account", outcome="ok", client=request.remote)
    return web.json_response({"erased": True, "segments_removed": segments,
                              "at": dt.datetime.now(dt.UTC).isoformat()})


async def export_me(request: web.Request) -> web.Response:
    """Everything held about me, as one FHIR R4 Bundle (GDPR articles 15 and 20): my
    account, devices, every measurement, my consents, and the log of accesses to my data."""
    deps = request.app[DEPS]
    patient_id = patient_of(bearer_claims(request, health_data=True))
    patient = await deps.patients.by_id(patient_id)
    if patient is None:
        raise Problem(401, "this account no longer exists")
    ref = f"Patient/{patient_id}"
    resources: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": str(patient_id), "active": True,
        "identifier": [{"system": "urn:healthiot:username", "value": patient.username}]}]
    for row in await deps.pool.fetch(
            "SELECT id, model, serial FROM devices WHERE patient_id = $1 ORDER BY id",
            patient_id):
        resources.append({"resourceType": "Device", "id": _fhir_id(row["id"]),
                          "identifier": [{"system": "urn:healthiot:device",
                                          "value": row["id"]}],
                          "serialNumber": row["serial"],
                          "deviceName": [{"name": row["model"], "type": "model-name"}],
                          "patient": {"reference": ref}})
    span = await deps.pool.fetchrow(
        "SELECT min(start_at) AS lo, max(end_at) AS hi FROM segments WHERE patient_id = $1",
        patient_id)
    if span["lo"] is not None:
        hi = span["hi"] + dt.timedelta(milliseconds=1)
        # Per source device, so that each Observation names the device that measured it.
        by_device: dict[str, dict[str, Samples]] = {}
        for metric in METRICS:
            per_source = await deps.store.read_by_source(patient_id, metric, span["lo"], hi)
            for device_id, samples in per_source.items():
                if len(samples):
                    by_device.setdefault(device_id, {})[metric] = samples
        found = [pair for device_id, series in sorted(by_device.items())
                 for pair in observations(patient_id, series, device_id)]
        resources += [r for _, r in sorted(found, key=lambda pair: (pair[0], pair[1]["id"]))]
    clinicians = Clinicians(deps.pool, deps.keyring)
    now = dt.datetime.now(dt.UTC)
    for c in await Consents(deps.pool).for_patient(patient_id):
        who = await clinicians.by_id(c.clinician_id)
        resources.append(fhir.consent_resource(
            str(c.id), ref, c.active(now), _ms(c.granted_at), _ms(c.expires_at),
            _ms(c.data_from), _ms(c.data_to), who.rpps if who else None,
            c.metrics))
    trail = await deps.audit.for_patient(patient_id, limit=100_000)
    what = await device_refs.resolve(deps.pool, [row["resource"] for row in trail])
    server = ("uri", f"{request.scheme}://{request.host}/fhir")
    names: dict[str, tuple[str, str | None]] = {}
    for row, resource in zip(trail, what, strict=True):
        if row["actor"] not in names:  # by name and RPPS, as the access log shows them
            names[row["actor"]] = await who_is(clinicians, row["actor"], patient_id)
        name, rpps = names[row["actor"]]
        client = ("ip", row["client_address"]) if row["client_address"] else None
        resources.append(fhir.audit_event(f"audit-{row['id']}", _ms(row["at"]),
                                          row["action"], row["outcome"], name, ref,
                                          resource, rpps=rpps, server=server,
                                          client=client))
    await deps.audit.record(actor=f"patient:{patient_id}", patient_id=patient_id, action="export",
                            resource="all", outcome="ok", client=request.remote)
    return web.json_response(fhir.bundle("collection", resources),
                             content_type="application/fhir+json")


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _fhir_id(text: str) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) for an internal identifier."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", text)[:64]
