"""The OpenAPI 3.1 document of the API, served at /openapi.json.

Written by hand next to the routes, checked against them two ways: a test asserts that every
registered route is documented and every documented one registered, and schemathesis sends
generated requests to the real application and checks each answer against this document.
The request body schemas are generated from the models of api.bodies, which the handlers
decode bodies into; they say ``additionalProperties: false`` as the models refuse unknown fields.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web

from api import bodies
from api.bodies import request_schema
from vitals.catalogue import METRIC_NAMES

Schema = dict[str, Any]

PROBLEM: Schema = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "status": {"type": "integer"}, "detail": {"type": "string"}}}
FHIR_RESOURCE: Schema = {"type": "object", "required": ["resourceType"],
                         "properties": {"resourceType": {"type": "string"}}}
STR: Schema = {"type": "string"}
# Text a client sends: no NUL character (PostgreSQL cannot store one; the API answers 400).
TEXT: Schema = {"type": "string", "pattern": bodies.NO_NUL}
NUM: Schema = {"type": "number"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
OPT_NUM: Schema = {"type": ["number", "null"]}
LOINC_CODE: Schema = {"type": ["string", "null"]}  # null: no LOINC code (an RR interval)
DATE_TIME: Schema = {"type": "string", "format": "date-time"}
# Instants and dates a client sends (see api.bodies: the same patterns as request bodies).
INSTANT: Schema = {"type": "string", "pattern": bodies.INSTANT_PATTERN}
DAY: Schema = {"type": "string", "pattern": rf"^{bodies.DAY_PATTERN}$"}
UUID: Schema = {"type": "string", "format": "uuid"}
# _format, defined by R4 for every interaction: the JSON forms (anything else is 406).
FHIR_FORMAT: Schema = {"name": "_format", "in": "query", "required": False, "schema": {
    "type": "string", "enum": ["json", "application/json", "application/fhir+json"]}}
METRIC_PARAM: Schema = {"name": "metric", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": list(METRIC_NAMES)}}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, *,
        closed: bool = False) -> Schema:
    schema: Schema = {"type": "object", "required": list(required),
                      "properties": {**required, **(optional or {})}}
    if closed:
        schema["additionalProperties"] = False
    return schema


def body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _problem(status: int, fhir: bool) -> Schema:
    phrase = HTTPStatus(status).phrase
    if fhir:
        return {"description": f"{phrase}: an OperationOutcome",
                "content": {"application/fhir+json": {"schema": FHIR_RESOURCE}}}
    return {"description": f"{phrase}: a problem (RFC 9457)",
            "content": {"application/problem+json": {"schema": PROBLEM}}}


def _problems(*, secure: bool, body: bool, errors: tuple[int, ...], fhir: bool
              ) -> dict[str, Schema]:
    """The error answers an operation can give, each by its exact status: 400 (a NUL or an
    unpaired surrogate in the path or query, on every route) and 429 (the request rate, a
    problem even under /fhir, where the limit answers before the route) everywhere; 401 and
    403 with a bearer token; 413, 415 and 422 with a body; ``errors`` of the handler."""
    codes = {400, *errors}
    if secure:
        codes |= {401, 403}
    if body:
        codes |= {413, 415, 422}
    out = {str(c): _problem(c, fhir and c not in (413, 415)) for c in sorted(codes)}
    out["429"] = _problem(429, False)
    return out


def op(summary: str, ok: Schema | None, *, status: str = "200", request: Schema | None = None,
       params: list[Schema] | None = None, secure: bool = True,
       media: str | tuple[str, ...] = "application/json", fhir: bool = False,
       errors: tuple[int, ...] = ()) -> Schema:
    response: Schema = {"description": summary}
    if ok is not None:
        response["content"] = {m: {"schema": ok} for m in
                               ((media,) if isinstance(media, str) else media)}
    out: Schema = {"summary": summary, "responses": {
        status: response, **_problems(secure=secure, body=request is not None, errors=errors,
                                      fhir=fhir)}}
    if request is not None:
        out["requestBody"] = body(request)
    if params:
        out["parameters"] = params
    if secure:
        out["security"] = [{"bearer": []}]
    else:
        out["security"] = []
    return out


def _healthz() -> Schema:
    out = op("ready: 200 when the database answers", obj({"status": STR}, {"database": STR}),
             secure=False)
    out["responses"]["503"] = {"description": "the database does not answer", "content": {
        "application/json": {"schema": obj({"status": STR, "database": STR})}}}
    return out


def q(name: str, schema: Schema, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def p(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


TOKENS = obj({"access_token": STR, "token_type": STR, "expires_in": INT,
              "refresh_token": STR, "second_factor": BOOL})
RANGE = [q("from", INSTANT), q("to", INSTANT)]
SUMMARY = obj({"unit": STR, "loinc": LOINC_CODE, "count": INT, "flagged": INT, "completeness": NUM,
               "episodes": {"type": "array", "items": obj(
                   {"rule": STR, "description": STR, "start": STR, "end": STR,
                    "value": NUM})}})
CONSENT = obj({"id": UUID, "clinician_id": UUID, "metrics": {"type": "array", "items": STR},
               "data_from": STR, "data_to": STR, "expires_at": STR, "granted_at": STR,
               "revoked_at": {"type": ["string", "null"]}, "active": BOOL})
FEED = obj({"enabled": BOOL, "link": {"type": "string", "enum": ["none", "linked", "relink"]},
            "pending": INT, "sent": INT, "refused": INT,
            "last_refusal": {"type": ["string", "null"]}})
ZONE = obj({"zone": STR, "history": {"type": "array", "items": obj(
    {"effective_from": STR, "zone": STR})}})
OPT_STR: Schema = {"type": ["string", "null"]}
ROLE: Schema = {"type": "string", "enum": ["owner", "member"]}
DEVICE = obj({"id": STR, "model": STR, "serial": STR,
              "state": {"type": "string",
                        "enum": ["provisioned", "paired", "revoked", "retired"]},
              "role": ROLE,
              "firmware_version": OPT_STR, "last_seen": OPT_STR, "state_changed_at": OPT_STR,
              "battery": {"oneOf": [{"type": "null"},
                                    obj({"percent": INT, "at": OPT_STR})]}})
HELD = obj({"id": UUID, "device_id": STR, "measured_at": STR, "held_at": STR,
            "expires_at": STR, "reason": STR,
            "values": {"type": "object", "additionalProperties": obj({"value": NUM,
                                                                       "unit": STR})}})
DEVICE_PARAM = p("device_id", TEXT)
READING_PARAMS = [DEVICE_PARAM, p("reading_id", TEXT)]
DEVICE_ORDER = obj({"metric": STR, "device_ids": {"type": "array", "items": STR}})

PATHS: dict[str, dict[str, Schema]] = {
    "/healthz": {"get": _healthz()},
    "/.well-known/jwks.json": {"get": op("the keys that sign access tokens", obj(
        {"keys": {"type": "array"}}), secure=False)},
    "/openapi.json": {"get": op("this document", {"type": "object"}, secure=False)},
    "/v1/accounts": {"post": op(
        "register; the answer holds the TOTP secret, once", obj(
            {"patient_id": UUID, "username": STR, "totp": obj({"secret": STR, "uri": STR})}),
        status="201", secure=False,
        request=request_schema(bodies.NewAccount))},
    "/v1/auth/login": {"post": op(
        "sign in: password, and the code for a token good for health data", TOKENS,
        secure=False, errors=(401,),
        request=request_schema(bodies.Login))},
    "/v1/auth/refresh": {"post": op("rotate a refresh token", TOKENS, secure=False,
                                    errors=(401,),
                                    request=request_schema(bodies.Refresh))},
    "/v1/auth/logout": {"post": op("end this session", None, status="204")},
    "/v1/me": {
        "get": op("my account", obj({"patient_id": UUID, "username": STR,
                                     "totp_confirmed": BOOL})),
        "delete": op("erase my account and all my data", obj(
            {"erased": BOOL, "segments_removed": INT, "at": STR}),
            request=request_schema(bodies.Erasure))},
    "/v1/me/export": {"get": op("all my data as a FHIR Bundle", FHIR_RESOURCE,
                                media="application/fhir+json")},
    "/v1/me/$export": {"get": op(
        "start a FHIR Bulk Data export of all my data: 202, the status URL in "
        "Content-Location", None, status="202",
        params=[{"name": "Prefer", "in": "header", "required": True,
                 "schema": {"type": "string", "enum": ["respond-async"]}}])},
    "/v1/me/export-jobs/{job_id}": {
        "get": op("the Bulk Data manifest of my export: one NDJSON file per resource type",
                  obj({"transactionTime": STR, "request": STR, "requiresAccessToken": BOOL,
                       "output": {"type": "array"}, "error": {"type": "array"}}),
                  errors=(404,), params=[p("job_id", TEXT)]),
        "delete": op("end my export", None, status="202", errors=(404,),
                     params=[p("job_id", TEXT)])},
    "/v1/me/export-jobs/{job_id}/{kind}": {"get": op(
        "one NDJSON file of my export, streamed", STR, media="application/fhir+ndjson",
        errors=(404,), params=[p("job_id", TEXT), p("kind", TEXT)])},
    "/v1/me/vitals": {"get": op("the latest value of each metric", obj(
        {"latest": {"type": "object"}}))},
    "/v1/me/vitals/{metric}": {"get": op(
        "one metric over a range: raw (all my devices, or one with device), per 1m/1h "
        "bucket (all devices), or per local day (1d: sources merged as in /daily)", obj(
            {"metric": STR, "unit": STR, "loinc": LOINC_CODE, "from": STR, "to": STR,
             "resolution": STR, "truncated": BOOL},
            {"device": STR, "zone": STR, "source_order": {"type": "array", "items": STR}}),
        errors=(404,), params=[METRIC_PARAM, *RANGE,
                q("resolution", {"type": "string", "enum": ["raw", "1m", "1h", "1d"]}),
                q("device", TEXT)])},
    "/v1/me/summary": {"get": op("a summary per metric", obj(
        {"from": STR, "to": STR, "metrics": {"type": "object",
                                               "additionalProperties": SUMMARY}}),
        params=RANGE)},
    "/v1/me/consents": {
        "get": op("my consents", obj({"consents": {"type": "array", "items": CONSENT}})),
        "post": op("share metrics of a period with a clinician until an expiry", CONSENT,
                   status="201", request=request_schema(bodies.NewConsent))},
    "/v1/me/consents/{consent_id}": {"delete": op("revoke a consent", None, status="204",
                                                  errors=(404,), params=[p("consent_id", TEXT)])},
    "/v1/me/access-log": {"get": op(
        "every access to my data; format=fhir for BALP AuditEvents", {"type": "object"},
        media=("application/json", "application/fhir+json"),
        params=[q("format", {"type": "string", "enum": ["json", "fhir"]}),
                q("before", {"type": "integer", "minimum": 1}),
                q("limit", {"type": "integer", "minimum": 1, "maximum": 500})])},
    "/v1/me/record-feed": {
        "get": op("the feed to my medical record", FEED),
        "put": op("turn the feed on (needs a linked record) or off (revokes the link)",
                  FEED, request=request_schema(bodies.FeedChoice), errors=(409,))},
    "/v1/me/record-feed/readings": {"get": op(
        "each reading queued for my record: sent, refused (and why) or pending",
        obj({"readings": {"type": "array", "items": obj(
            {"metric": STR, "measured_at": STR, "state": STR, "reason": OPT_STR,
             "sent_at": OPT_STR})}}))},
    "/v1/me/record-link": {
        "post": op("start linking my medical record: the URL to sign in there",
                   obj({"authorization_url": STR}), errors=(404, 503)),
        "delete": op("unlink my medical record: the feed stops, its tokens are revoked",
                     None, status="204", errors=(404,))},
    "/v1/record-link/callback": {"get": op(
        "where the medical record sends me back after I authorised healthiot",
        obj({"linked": BOOL}), secure=False, errors=(404, 503),
        params=[q("state", STR), q("code", STR), q("error", STR)])},
    "/v1/me/timezone": {
        "get": op("my time zone and its history", ZONE),
        "put": op("my time zone from now, or from a past instant until my next change",
                  ZONE, request=request_schema(bodies.ZoneChange))},
    "/v1/me/daily/{metric}": {"get": op(
        "one figure per local day, with each source's own", obj(
            {"metric": STR, "unit": STR, "zone": STR,
             "source_order": {"type": "array", "items": STR},
             "days": {"type": "array", "items": obj(
                 {"date": STR, "hours": NUM, "value": OPT_NUM, "count": INT,
                  "min": OPT_NUM, "max": OPT_NUM, "sources": {"type": "object"},
                  "counted": {"type": "object"}})}}),
        errors=(404,), params=[METRIC_PARAM, q("from", DAY), q("to", DAY)])},
    "/v1/me/sources/{metric}": {
        "get": op("my device order for a metric", DEVICE_ORDER, params=[METRIC_PARAM],
                  errors=(404,)),
        "put": op("set my device order for a metric", DEVICE_ORDER, params=[METRIC_PARAM],
                  errors=(404,),
                  request=request_schema(bodies.SourceOrder))},
    "/v1/me/devices": {"get": op(
        "my devices: state, last seen, battery when known",
        obj({"devices": {"type": "array", "items": DEVICE}}))},
    "/v1/me/devices/pair": {"post": op(
        "pair a device with its serial and the code it shows", DEVICE, status="201",
        request=request_schema(bodies.Pairing))},
    "/v1/me/devices/{device_id}": {"delete": op(
        "unpair a device: its certificate is revoked", None, status="204", errors=(404, 409),
        params=[p("device_id", TEXT)])},
    "/v1/me/devices/join": {"post": op(
        "join a shared scale with an invitation code, as a member",
        DEVICE, status="201", errors=(404, 409),
        request=request_schema(bodies.Invitation))},
    "/v1/me/devices/{device_id}/invitations": {"post": op(
        "the owner's one-time code inviting a member to a scale", obj(
            {"device_id": STR, "code": STR, "expires_at": STR}), status="201",
        errors=(404, 409), params=[DEVICE_PARAM])},
    "/v1/me/devices/{device_id}/users": {"get": op(
        "who uses a shared scale", obj({"users": {"type": "array", "items": obj(
            {"patient_id": UUID, "username": STR, "role": ROLE, "joined_at": STR,
             "me": BOOL})}}), errors=(404,), params=[DEVICE_PARAM])},
    "/v1/me/devices/{device_id}/users/{user}": {"delete": op(
        "the owner removes a member (a patient id), or a member leaves (me)", None,
        status="204", errors=(404, 409), params=[DEVICE_PARAM, p("user", TEXT)])},
    "/v1/me/devices/{device_id}/unclaimed": {"get": op(
        "weighings of a shared scale held for its users to claim",
        obj({"readings": {"type": "array", "items": HELD}}), errors=(404,),
        params=[DEVICE_PARAM])},
    "/v1/me/devices/{device_id}/unclaimed/{reading_id}/claim": {"post": op(
        "claim a held weighing: it becomes my data", HELD, errors=(404, 409),
        params=READING_PARAMS)},
    "/v1/me/devices/{device_id}/unclaimed/{reading_id}/dismiss": {"post": op(
        "not mine: hide a held weighing from my list", None, status="204",
        errors=(404, 409), params=READING_PARAMS)},
    "/v1/clinicians/login": {"post": op(
        "clinician sign-in with password and code", TOKENS, secure=False, errors=(401,),
        request=request_schema(bodies.ClinicianLogin))},
    "/v1/clinicians/oidc/nonce": {"post": op(
        "a single-use nonce for the identity provider's authorisation request",
        obj({"nonce": STR, "expires_in": INT}), status="201", secure=False, errors=(404,))},
    "/v1/clinicians/oidc": {"post": op(
        "clinician sign-in with an ID token of the identity provider", TOKENS, secure=False,
        errors=(401, 403, 404, 409),
        request=request_schema(bodies.IdToken))},
    "/v1/clinician/patients": {"get": op("patients who share with me", obj(
        {"patients": {"type": "array", "items": obj({"patient_id": UUID})}}))},
    "/v1/clinician/patients/{patient_id}/summary": {"get": op(
        "a patient's summary, limited to what they share", obj(
            {"patient_id": UUID, "from": STR, "to": STR,
             "metrics": {"type": "object", "additionalProperties": SUMMARY}}),
        params=[p("patient_id", TEXT), *RANGE])},
    "/v1/clinician/patients/{patient_id}/charts/{metric}": {"get": op(
        "a shared metric as an SVG chart", STR, media="image/svg+xml", errors=(404,),
        params=[p("patient_id", TEXT), p("metric", TEXT), *RANGE])},
    "/v1/operators/login": {"post": op(
        "operator sign-in with password and code (both required)", TOKENS, secure=False,
        errors=(401,), request=request_schema(bodies.OperatorLogin))},
    "/v1/operator/refusals": {"get": op(
        "refusals (quarantine records) over a period, default the last day, newest first, "
        "with counts per device and reason; payloads only with include=payload and the "
        "operator-values role; every access audited", obj(
            {"from": STR, "to": STR, "device": OPT_STR, "reason": OPT_STR,
             "refusals": {"type": "array", "items": obj(
                 {"id": INT, "received_at": STR, "device_id": OPT_STR, "topic": STR,
                  "reason": STR, "detail": STR},
                 {"payload": {"type": ["string", "null"], "contentEncoding": "base64"}})},
             "counts": {"type": "array", "items": obj(
                 {"device_id": OPT_STR, "reason": STR, "count": INT})},
             "truncated": BOOL}),
        params=[q("device", TEXT), q("reason", TEXT), *RANGE,
                q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                q("include", {"type": "string", "enum": ["payload"]})])},
    "/fhir/metadata": {"get": op("CapabilityStatement", FHIR_RESOURCE, secure=False,
                                 media="application/fhir+json", fhir=True,
                                 params=[FHIR_FORMAT], errors=(406,))},
    "/fhir/Patient/{patient_id}": {"get": op(
        "a patient who shares with me", FHIR_RESOURCE, media="application/fhir+json",
        fhir=True, params=[p("patient_id", TEXT), FHIR_FORMAT], errors=(406,))},
    "/fhir/Device/{device_id}": {"get": op(
        "a device that measured a patient who shares with me", FHIR_RESOURCE,
        media="application/fhir+json", fhir=True, params=[p("device_id", TEXT), FHIR_FORMAT],
        errors=(406,))},
    "/fhir/Observation/{observation_id}": {"get": op(
        "an Observation by the id a search gave it", FHIR_RESOURCE,
        media="application/fhir+json", fhir=True, errors=(404, 406),
        params=[p("observation_id", TEXT), FHIR_FORMAT])},
    "/fhir/Observation": {"get": op(
        "shared Observations: by patient, code, category, date; sorted by date; keyset "
        "paging by the next link; unknown parameters ignored unless Prefer: handling=strict",
        FHIR_RESOURCE, media="application/fhir+json", fhir=True, errors=(406,),
        params=[q("patient", TEXT, required=True), q("code", TEXT), q("category", TEXT),
                {"name": "date", "in": "query", "required": False,
                 "schema": {"type": "array", "items": TEXT}, "style": "form", "explode": True},
                q("_count", {"type": "integer", "minimum": 0}),
                q("_sort", {"type": "string", "enum": ["date", "-date"]}),
                q("_summary", {"type": "string", "enum": ["count", "false"]}),
                q("_total", {"type": "string", "enum": ["none", "estimate", "accurate"]}),
                q("_cursor", {"type": "string", "pattern": "^-?[0-9]{1,16}\\.[0-9a-z-]{1,64}$"}),
                FHIR_FORMAT])},
}


def document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {"title": "healthiot API", "version": "1",
                 "description": "Patients', clinicians' and operators' API: accounts with "
                                "two factors, vitals, consent, access log, GDPR rights, "
                                "FHIR R4 reads, refusals for operators."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "bearerFormat": "JWT"}}},
        "paths": PATHS,
    }


def query_parameters(path: str, method: str) -> frozenset[str] | None:
    """The query parameters documented for an operation; None for one not documented."""
    operation = PATHS.get(path, {}).get(method.lower())
    if operation is None:
        return None
    return frozenset(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")


def register(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve)


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())
