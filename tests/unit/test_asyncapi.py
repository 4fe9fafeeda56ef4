"""asyncapi.yaml is a well-formed AsyncAPI 3.0 document and says what the code does: the
metrics, units, limits, CBOR labels and reason codes it lists are the code's own, and its
examples decode and normalise without a refusal. (That the bridge stores them through a real
broker is tests/integration/test_device_contract.py.)"""

import json
import re
from typing import Any

import cbor2
import jsonschema
import numpy as np
import pytest

from devices import renewal
from devices.identity import is_device_id
from firmware_sim.device import MAX_RESEND_RANGES
from tests import contract
from vitals import senml
from vitals.catalogue import METRICS
from vitals.normalise import DEFAULT_FUTURE_WINDOW_S, DEFAULT_PAST_WINDOW_S, Reject, normalise

NOW = 1_767_310_000.0


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_document_is_asyncapi_3_with_every_reference_resolving():
    doc = contract.document()
    assert doc["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= doc["info"].keys()
    assert set(doc) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels",
                        "operations", "components"} | {k for k in doc if k.startswith("x-")}
    refs = _refs(doc)
    assert refs
    for ref in refs:
        contract.resolve(ref)  # KeyError when dangling
    for name, channel in doc["channels"].items():
        declared = set(channel.get("parameters", {}))
        assert set(re.findall(r"{(\w+)}", channel["address"])) == declared, name
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            # AsyncAPI 3: an operation's messages are those of its channel.
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
        mqtt = operation["bindings"]["mqtt"]
        assert mqtt["qos"] == 1 and mqtt.get("retain", False) is False


def test_every_schema_is_valid_json_schema():
    for schema in contract.document()["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)
    for message in contract.document()["components"]["messages"].values():
        jsonschema.Draft7Validator.check_schema(message["payload"])


@pytest.mark.parametrize("channel", ["telemetry", "inbox"])
def test_every_example_conforms_to_its_message(channel):
    examples = list(contract.examples(channel))
    assert examples
    for name, example in examples:
        contract.check(name, example["payload"], example.get("headers"))


@pytest.mark.parametrize(("name", "payload", "headers"), [
    ("senmlJson", [], {"seq": "1"}),
    ("senmlJson", [{"n": "heart_rate", "u": "/min"}], {"seq": "1"}),
    ("senmlJson", [{"n": "heart_rate", "v": 60, "x_": 1}], {"seq": "1"}),
    ("senmlJson", [{"n": "heart_rate", "v": 60}], {}),
    ("senmlJson", [{"n": "heart_rate", "v": 60}], {"seq": "1e3"}),
    ("refusalNotice", {"refused": "message", "reason": "bad_luck"}, None),
    ("resendRequest", {"resend": [[0, 3]]}, None),
], ids=["empty", "no-value", "must-understand", "no-seq", "seq-not-decimal", "unknown-reason",
        "seq-zero"])
def test_what_the_code_refuses_does_not_conform(name, payload, headers):
    with pytest.raises(jsonschema.ValidationError):
        contract.check(name, payload, headers)


def test_the_telemetry_examples_decode_and_every_sample_is_accepted():
    for name, example in contract.examples("telemetry"):
        records = example["payload"]
        if name == "senmlCbor":
            labels = contract.document()["x-cbor-labels"]
            payload = cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in records])
            pack = senml.decode_cbor(payload, received_at=NOW)
        else:
            pack = senml.decode_json(json.dumps(records).encode(),
                                     received_at=NOW)
        norm = normalise([pack], [NOW])
        assert len(norm) == len(pack) and np.all(norm.reject == Reject.ACCEPTED), example


def test_metrics_and_units_are_the_catalogues():
    listed = contract.document()["x-metrics"]
    assert list(listed) == list(METRICS)
    for name, metric in METRICS.items():
        assert listed[name]["unit"] == metric.unit
        assert set(listed[name]["accepts"]) == {metric.unit, *metric.conversions}


def test_limits_labels_and_content_types_are_the_codecs():
    doc = contract.document()
    limits = doc["x-limits"]
    assert limits["maxPayloadBytes"] == senml.MAX_PAYLOAD_BYTES
    assert limits["maxRecords"] == senml.MAX_RECORDS
    assert limits["maxTextLength"] == senml._MAX_TEXT
    assert limits["maxCsrBytes"] == renewal.MAX_CSR_BYTES
    assert limits["maxResendRanges"] == MAX_RESEND_RANGES
    assert limits["timeWindowPastSeconds"] == DEFAULT_PAST_WINDOW_S
    assert limits["timeWindowFutureSeconds"] == DEFAULT_FUTURE_WINDOW_S
    schemas = doc["components"]["schemas"]
    assert schemas["senmlPack"]["maxItems"] == senml.MAX_RECORDS
    assert schemas["senmlRecord"]["properties"]["bver"]["maximum"] == senml.SENML_VERSION
    assert doc["x-cbor-labels"] == {k: senml._CBOR_NAMES[k] for k in doc["x-cbor-labels"]}
    assert set(doc["x-cbor-labels"]) == set(senml._KNOWN_FIELDS)
    messages = doc["components"]["messages"]
    assert set(senml.DECODERS) == {messages["senmlJson"]["contentType"],
                                   messages["senmlCbor"]["contentType"]}
    assert messages["renewalCertificate"]["contentType"] == renewal.CERTIFICATE_CONTENT_TYPE
    assert messages["renewalRefused"]["contentType"] == renewal.REFUSAL_CONTENT_TYPE


def test_every_reason_code_is_explained():
    doc = contract.document()
    schemas = doc["components"]["schemas"]
    reasons = schemas["refusalReason"]["enum"] + schemas["sampleReason"]["enum"]
    assert sorted(reasons) == sorted(doc["x-reasons"])
    assert set(schemas["sampleReason"]["enum"]) == {
        r.name.lower() for r in Reject if r is not Reject.ACCEPTED}


def test_the_device_id_example_is_a_device_id():
    for example in contract.document()["components"]["parameters"]["deviceId"]["examples"]:
        assert is_device_id(example)
