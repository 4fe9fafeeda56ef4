"""What every handler shares: the typed dependencies, request bodies, bearer tokens, times.

Route modules (``api/*_routes.py``) import from here, never from ``api.app``, so that the
application can import them without a cycle.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from api.bodies import BODIES, Body, field_errors
from api.limits import Limits
from api.oidc import OidcVerifier
from api.problems import Problem
from api.record_auth import RecordAccount
from api.tokens import Claims, TokenError, TokenService
from devices.registry import Registry
from storage.audit import Audit
from storage.keyring import Keyring
from storage.patients import Patients
from storage.store import Store


@dataclass(frozen=True)
class ApiDeps:
    """Everything the handlers need, created by the composition root."""

    pool: asyncpg.Pool
    keyring: Keyring
    store: Store
    registry: Registry
    patients: Patients
    audit: Audit
    tokens: TokenService
    oidc: OidcVerifier | None = None  # clinician sign-in through an identity provider
    record: RecordAccount | None = None  # the patients' links to their medical record
    limits: Limits = field(default_factory=Limits)


DEPS = web.AppKey("deps", ApiDeps)
B = TypeVar("B", bound=Body)


# Text PostgreSQL cannot store (NUL) or UTF-8 cannot encode (an unpaired surrogate, which
# JSON's \\ud800 escape and a percent-encoded query can both produce).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> bool:
    """True when ``text`` holds a NUL character or an unpaired surrogate."""
    return _UNSTORABLE.search(text) is not None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number too large for a float")
    return value


def _check_text(value: Any) -> None:
    """Problem 400 for a string anywhere in ``value`` (keys too) that cannot be stored."""
    if isinstance(value, str):
        if unstorable(value):
            raise Problem(400, "the body holds a NUL character or an unpaired surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


async def read_body(request: web.Request, model: type[B]) -> B:
    """The JSON body of ``request`` as ``model``, the model ``api.bodies.BODIES`` gives for
    the route (the one its OpenAPI schema is generated from).

    Not application/json: 415. Not JSON (NaN and numbers beyond a float included), too
    deeply nested, or holding text that cannot be stored: 400. Not an object of the model
    (unknown, missing or wrong-typed fields; bool is no integer): 422, with the extension
    members ``unknown``, ``missing`` and ``wrong_type`` listing the fields. A handler that
    asks for a model other than its route's raises ``LookupError`` (a bug: 500)."""
    route = request.match_info.route.resource
    if route is None or BODIES.get((request.method, route.canonical)) is not model:
        raise LookupError(f"{model.__name__} is not the body of {request.method} "
                          f"{route.canonical if route else request.path} in api.bodies.BODIES")
    if request.content_type != "application/json":
        raise Problem(415, "send application/json")
    return decode(await request.read(), model)


def decode(raw: bytes, model: type[B]) -> B:
    """``raw`` as ``model``, or the problem (400 or 422) ``read_body`` describes."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant,
                          parse_float=_finite)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, or an over-long integer
        raise Problem(400, "the body is not valid JSON") from None
    except RecursionError:  # thousands of nested [ or {: no body of ours nests that deep
        raise Problem(400, "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise Problem(422, "the body must be a JSON object")
    _check_text(body)
    try:
        # strict: no coercion, so a string is no number and true no integer.
        return msgspec.convert(body, model, strict=True)
    except msgspec.ValidationError as exc:
        unknown, missing, wrong = field_errors(body, model)
        raise Problem(422, f"the body does not match the schema: {exc}",
                      extra={"unknown": unknown, "missing": missing,
                             "wrong_type": wrong}) from None


def bearer_claims(request: web.Request, *, health_data: bool) -> Claims:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(401, "a bearer token is required")
    try:
        claims = request.app[DEPS].tokens.verify(token)
    except TokenError:
        raise Problem(401, "the token is not valid") from None
    if health_data and not claims.second_factor:
        raise Problem(403, "health data needs a second authentication factor")
    return claims


# Instants the API accepts: no device measured before 1970, and staying far from
# datetime's year 1 and 9999 keeps range arithmetic (a year before, a day after) safe.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def parse_instant(raw: str, name: str, status: int = 400) -> dt.datetime:
    """An ISO 8601 date-time with an offset, in UTC, within [EARLIEST, LATEST); else a
    problem with ``status``."""
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise Problem(status, f"{name} must be an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise Problem(status, f"{name} needs a time zone offset (e.g. Z)")
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        value = EARLIEST - dt.timedelta(days=1)
    if not EARLIEST <= value < LATEST:
        raise Problem(status, f"{name} must be between {EARLIEST.year} and {LATEST.year}")
    return value


def time_param(request: web.Request, name: str, default: dt.datetime) -> dt.datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    return parse_instant(raw, name)


def int_param(request: web.Request, name: str, default: int, top: int) -> int:
    """A whole number from 1 to ``top`` (ASCII digits, at most 18 of them: int() refuses
    thousands of digits with ValueError, and no parameter of ours needs more), else 400."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or not 1 <= int(raw) <= top:
        raise Problem(400, f"{name} must be a whole number from 1 to {top}")
    return int(raw)


CLINICIAN_SUBJECT = "clinician:"  # access tokens of clinicians: sub = clinician:<uuid>
OPERATOR_SUBJECT = "operator:"  # access tokens of operators: sub = operator:<uuid>


def patient_of(claims: Claims) -> uuid.UUID:
    """The patient a token speaks for; 403 for a clinician's token on a patient route."""
    try:
        return uuid.UUID(claims.subject)
    except ValueError:
        raise Problem(403, "this route is for patients") from None


def clinician_of(claims: Claims) -> uuid.UUID:
    """The clinician a token speaks for; 403 for a patient's token on a clinician route."""
    try:
        if claims.subject.startswith(CLINICIAN_SUBJECT):
            return uuid.UUID(claims.subject.removeprefix(CLINICIAN_SUBJECT))
    except ValueError:
        pass
    raise Problem(403, "this route is for clinicians")


def operator_of(claims: Claims) -> uuid.UUID:
    """The operator a token speaks for; 403 for a patient's or a clinician's token."""
    try:
        if claims.subject.startswith(OPERATOR_SUBJECT):
            return uuid.UUID(claims.subject.removeprefix(OPERATOR_SUBJECT))
    except ValueError:
        pass
    raise Problem(403, "this route is for operators")


def uuid_param(request: web.Request, name: str, *, status: int = 404) -> uuid.UUID:
    """A UUID path parameter; anything else answers ``status`` (as an unknown id would)."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise Problem(status, f"no such {name.removesuffix('_id')}") from None
