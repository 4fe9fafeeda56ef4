"""The request bodies of the API: one typed model per body, the single source of both the
handlers' validation (``api.requests.read_body`` converts a body into its model) and the
request schemas of the OpenAPI document (``request_schema``), so that the two cannot drift.

Every model refuses unknown fields (no mass assignment). A constraint given with ``Meta``
(``pattern``, ``min_length``, ``max_length``) is enforced and documented; one given only as
``extra_json_schema`` (see ``documented``) is documented but left to the handler, because the
handler applies it after normalising the value (a username is stripped and lower-cased) or
the document states it narrower than the rule so that a generator produces only real values
(instants).

``BODIES`` maps each operation that takes a body to its model: the document's schema for the
operation is generated from it, and ``read_body`` refuses a handler that asks for another.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from api import passwords
from devices.registry import MAX_SERIAL_LENGTH

# Text a client sends: no NUL character (PostgreSQL cannot store one; the API answers 400
# before the model is consulted).
NO_NUL = "^[^\\x00]*$"
Text = Annotated[str, Meta(pattern=NO_NUL)]

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@+-]{2,63}$")
MAX_PAIRING_CODE_LENGTH = 32  # a code is 10 characters; room for dashes and spaces
MAX_INVITATION_CODE_LENGTH = 64  # a code is 16 characters; room for dashes and spaces
# Instants and dates a client sends: within the years the API accepts (1970-2199), written
# so that a generator produces only real ones (days 1-28, offsets under 14 hours).
DAY_PATTERN = r"(19[89]\d|20\d\d|21\d\d)-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
INSTANT_PATTERN = (rf"^{DAY_PATTERN}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{{1,6}})?"
                   r"(Z|[+-](0\d|1[0-3]):[0-5]\d)$")


def documented(**schema: Any) -> Meta:
    """A constraint the document states and the handler enforces, not the model."""
    return Meta(extra_json_schema=schema)


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: a JSON object with these fields and no other."""


class NewAccount(Body):
    username: Annotated[str, documented(pattern=USERNAME.pattern)]  # stripped, lower-cased
    password: Annotated[str, Meta(min_length=passwords.MIN_LENGTH,
                                  max_length=passwords.MAX_LENGTH, pattern=NO_NUL)]


class Login(Body):
    username: Text
    password: Text
    totp: Text | UnsetType = UNSET  # without it, a token that cannot read health data


class Refresh(Body):
    refresh_token: Text


class Erasure(Body):
    password: Text
    totp: Text


class NewConsent(Body):
    clinician_rpps: Text
    metrics: list[Text]
    categories: list[Text]
    data_from: Text
    data_to: Text
    expires_at: Text


class FeedChoice(Body):
    enabled: bool


class ZoneChange(Body):
    zone: Text
    effective_from: Annotated[str, documented(pattern=INSTANT_PATTERN)] | UnsetType = UNSET


class SourceOrder(Body):
    device_ids: list[Text]


class Pairing(Body):
    serial: Annotated[str, Meta(max_length=MAX_SERIAL_LENGTH,
                                pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")]  # not blank
    pairing_code: Annotated[str, Meta(max_length=MAX_PAIRING_CODE_LENGTH, pattern=NO_NUL)]


class Invitation(Body):
    code: Annotated[str, Meta(max_length=MAX_INVITATION_CODE_LENGTH, pattern=NO_NUL)]


class ClinicianLogin(Body):
    username: Text
    password: Text
    totp: Text


class IdToken(Body):
    id_token: Text


class OperatorLogin(Body):
    username: Text
    password: Text
    totp: Text  # required: no operator session without the second factor


# (method, path as the router and the document write it) -> the model of its body.
BODIES: dict[tuple[str, str], type[Body]] = {
    ("POST", "/v1/accounts"): NewAccount,
    ("POST", "/v1/auth/login"): Login,
    ("POST", "/v1/auth/refresh"): Refresh,
    ("DELETE", "/v1/me"): Erasure,
    ("POST", "/v1/me/consents"): NewConsent,
    ("PUT", "/v1/me/record-feed"): FeedChoice,
    ("PUT", "/v1/me/timezone"): ZoneChange,
    ("PUT", "/v1/me/sources/{metric}"): SourceOrder,
    ("POST", "/v1/me/devices/pair"): Pairing,
    ("POST", "/v1/me/devices/join"): Invitation,
    ("POST", "/v1/clinicians/login"): ClinicianLogin,
    ("POST", "/v1/clinicians/oidc"): IdToken,
    ("POST", "/v1/operators/login"): OperatorLogin,
}


def request_schema(model: type[Body]) -> dict[str, Any]:
    """The JSON schema of ``model``, inline (our models nest no other model)."""
    (ref,), components = msgspec.json.schema_components([model], ref_template="{name}")
    return dict(components[ref["$ref"]])


def field_errors(body: dict[str, Any], model: type[Body]
                 ) -> tuple[list[str], list[str], list[str]]:
    """The fields of ``body`` unknown to ``model``, those it misses, and those whose value
    is not of the field's type (its pattern and lengths included), each sorted."""
    fields = msgspec.structs.fields(model)
    names = {f.name for f in fields}
    required = {f.name for f in fields if f.required}
    wrong = []
    for f in fields:
        if f.name in body:
            try:
                msgspec.convert(body[f.name], f.type, strict=True)
            except msgspec.ValidationError:
                wrong.append(f.name)
    return sorted(body.keys() - names), sorted(required - body.keys()), sorted(wrong)
