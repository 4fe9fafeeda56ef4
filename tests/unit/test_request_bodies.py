"""Request bodies: one model per body, from which the handler decodes and the OpenAPI
document's schema is generated, so the two cannot drift."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.bodies import BODIES, Body, FeedChoice, Invitation, Login, request_schema
from api.openapi import document
from api.problems import Problem, problem_middleware
from api.requests import decode, read_body


def _documented_bodies() -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): operation["requestBody"]["content"]["application/json"]
            ["schema"]
            for path, operations in document()["paths"].items()
            for method, operation in operations.items() if "requestBody" in operation}


def test_every_documented_request_body_is_generated_from_the_model_its_handler_decodes() -> None:
    documented = _documented_bodies()
    assert documented.keys() == BODIES.keys()
    for key, schema in documented.items():
        assert schema == request_schema(BODIES[key]), key


def test_request_schemas_are_closed_and_keep_their_constraints() -> None:
    for model in BODIES.values():
        assert request_schema(model)["additionalProperties"] is False
    code = request_schema(Invitation)["properties"]["code"]
    assert code == {"type": "string", "maxLength": 64, "pattern": "^[^\\x00]*$"}
    login = request_schema(Login)
    assert login["required"] == ["username", "password"]  # totp may be left out
    assert request_schema(FeedChoice)["properties"]["enabled"] == {"type": "boolean"}


class Counter(Body):  # no body of the API has an integer yet
    n: int


@pytest.mark.parametrize("flag", ["true", "false"])
def test_an_integer_field_refuses_true_and_false(flag: str) -> None:
    with pytest.raises(Problem) as caught:
        decode(f'{{"n": {flag}}}'.encode(), Counter)
    assert caught.value.status == 422
    assert caught.value.extra["wrong_type"] == ["n"]
    assert decode(b'{"n": 3}', Counter).n == 3


def test_unknown_missing_and_wrong_typed_fields_are_all_named() -> None:
    with pytest.raises(Problem) as caught:
        decode(b'{"username": 1, "totp": null, "role": "admin", "id": 2}', Login)
    assert caught.value.status == 422
    assert caught.value.extra == {"unknown": ["id", "role"], "missing": ["password"],
                                  "wrong_type": ["totp", "username"]}


def test_a_constraint_of_the_model_is_enforced() -> None:
    with pytest.raises(Problem) as caught:
        decode(b'{"code": "%s"}' % (b"x" * 65), Invitation)
    assert (caught.value.status, caught.value.extra["wrong_type"]) == (422, ["code"])
    assert decode(b'{"code": "%s"}' % (b"x" * 64), Invitation).code == "x" * 64


@pytest.mark.parametrize("raw", [b"{", b'{"n": NaN}', b'{"n": 1e999}', b"[" * 100_000,
                                 b'{"n": "a\\u0000"}', b'{"n": "\\ud800"}'])
def test_bodies_that_are_not_json_or_not_storable_are_refused_before_the_model(
        raw: bytes) -> None:
    with pytest.raises(Problem) as caught:
        decode(raw, Counter)
    assert caught.value.status == 400


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(Problem) as caught:
        decode(b"[]", Counter)
    assert caught.value.status == 422


async def test_a_handler_asking_for_another_model_than_its_routes_is_a_bug() -> None:
    async def wrong(request: web.Request) -> web.Response:
        await read_body(request, Invitation)  # the route's model is FeedChoice
        return web.Response()

    async def right(request: web.Request) -> web.Response:
        body = await read_body(request, FeedChoice)
        return web.json_response({"enabled": body.enabled})

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_put("/v1/me/record-feed", right)
    app.router.add_post("/v1/me/devices/pair", wrong)
    async with TestClient(TestServer(app)) as client:
        ok = await client.put("/v1/me/record-feed", json={"enabled": True})
        assert (ok.status, await ok.json()) == (200, {"enabled": True})
        refused = await client.put("/v1/me/record-feed", data=b"{}")
        assert refused.status == 415
        bug = await client.post("/v1/me/devices/pair", json={"code": "x"})
        assert bug.status == 500
