"""The device contract (asyncapi.yaml) for tests: its messages, examples and schemas.

Schemas are checked with jsonschema's Draft 7 validator (AsyncAPI 3.0's default schema
format is a superset of Draft 7), resolving ``$ref`` inside the whole document.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterator
from typing import Any

import jsonschema
import yaml

DOCUMENT = pathlib.Path(__file__).resolve().parents[1] / "asyncapi.yaml"


@functools.cache
def document() -> dict[str, Any]:
    with DOCUMENT.open() as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def resolve(ref: str) -> Any:
    """The object a local ``$ref`` (``#/a/b``) points to; KeyError when it points nowhere."""
    assert ref.startswith("#/"), ref
    node: Any = document()
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def message(name: str) -> dict[str, Any]:
    found: dict[str, Any] = document()["components"]["messages"][name]
    return found


def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    """A validator of ``schema``, whose ``$ref``s resolve in the whole document."""
    if "$ref" in schema:
        root = {**document(), "$ref": schema["$ref"]}
        return jsonschema.Draft7Validator(root)
    return jsonschema.Draft7Validator({**schema, "components": document()["components"]})


def check(message_name: str, payload: Any, headers: dict[str, str] | None = None,
          content_type: str | None = None) -> None:
    """Raise jsonschema.ValidationError (or AssertionError) unless this message conforms."""
    spec = message(message_name)
    validator(spec["payload"]).validate(payload)
    if headers is not None and "headers" in spec:
        validator(spec["headers"]).validate(headers)
    if content_type is not None:
        assert content_type == spec["contentType"], (content_type, spec["contentType"])


def inbox_message_names() -> list[str]:
    return [ref["$ref"].rsplit("/", 1)[-1]
            for ref in document()["channels"]["inbox"]["messages"].values()]


def examples(channel: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(message name, example) for every example of the messages of ``channel``."""
    for ref in document()["channels"][channel]["messages"].values():
        name = ref["$ref"].rsplit("/", 1)[-1]
        for example in message(name).get("examples", []):
            yield name, example
