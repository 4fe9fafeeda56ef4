"""SenML CBOR (RFC 8428 section 6): integer labels, the same validation as JSON, and a fuzzed
decoder that answers a Pack or a PayloadError, nothing else."""

from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitals.errors import PayloadError
from vitals.senml import (
    CONTENT_TYPE_CBOR,
    CONTENT_TYPE_JSON,
    DECODERS,
    MAX_PAYLOAD_BYTES,
    Pack,
    decode_cbor,
    decode_json,
    encode_cbor,
    encode_json,
)

RECEIVED_AT = 1_750_000_000.0
FUZZ = settings(database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])
BVER, BN, BT, BU, N, U, V, T = -1, -2, -3, -4, 0, 1, 2, 6  # RFC 8428 table 6


def refusal(payload: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        decode_cbor(payload, received_at=RECEIVED_AT)
    return caught.value


def test_integer_labels_decode_like_their_json_names() -> None:
    payload = cbor2.dumps([{BN: "watch-12ab/", BT: 1_700_000_000, BU: "/min", N: "heart_rate",
                            V: 70}, {N: "heart_rate", T: 1, V: 72.5}])
    pack = decode_cbor(payload, received_at=RECEIVED_AT)
    assert pack == Pack(["heart_rate", "heart_rate"], ["/min", "/min"],
                        [1_700_000_000.0, 1_700_000_001.0], [70.0, 72.5])


@pytest.mark.parametrize(("bver", "used"), [(10, True), (3, True), (11, False), (2**64, False),
                                            ("10", False), (10.0, False), (-1, False)])
def test_the_version_label_is_checked_as_in_json(bver: object, used: bool) -> None:
    payload = cbor2.dumps([{BVER: bver, N: "heart_rate", U: "/min", V: 70}])
    if used:
        assert decode_cbor(payload, received_at=RECEIVED_AT).values == [70.0]
    else:
        assert refusal(payload).reason == "unsupported_version"


def test_the_same_pack_in_cbor_and_json_decodes_the_same_and_cbor_is_smaller() -> None:
    records = [("heart_rate", "/min", 1_700_000_000.0 + i, 60.0 + i % 7) for i in range(60)]
    as_cbor, as_json = encode_cbor("w/", records), encode_json("w/", records)
    assert (decode_cbor(as_cbor, received_at=RECEIVED_AT)
            == decode_json(as_json, received_at=RECEIVED_AT))
    assert len(as_cbor) < len(as_json)


def test_content_types_choose_the_decoder() -> None:
    assert DECODERS == {CONTENT_TYPE_JSON: decode_json, CONTENT_TYPE_CBOR: decode_cbor}


@pytest.mark.parametrize(("payload", "words"), [
    (b"", "not CBOR"),
    (b"\xff", "not CBOR"),
    (cbor2.dumps({N: "x"}), "non-empty array"),
    (cbor2.dumps([]), "non-empty array"),
    (cbor2.dumps([[1, 2]]), "not an object"),
    (cbor2.dumps([{N: "heart_rate", V: "70"}]), "not a number"),
    (cbor2.dumps([{N: "heart_rate", V: True}]), "not a number"),
    (cbor2.dumps([{N: "heart_rate", V: math.nan}]), "non-finite"),
    (cbor2.dumps([{N: "heart_rate", V: 70, "x_": 1}]), "must-understand"),
    (cbor2.dumps([{N: "heart_rate", U: "/min"}]), "no numeric value"),
    (cbor2.dumps([[[[{N: "x"}]]]]), "not CBOR"),  # deeper than SenML ever is
    (b"\x81\xa2\x00\x61x\x00\x61y", "not CBOR"),  # the same label twice in one record
    (b"\x9f\xa1\x02\x01\xff", "not CBOR"),  # indefinite length
    (cbor2.dumps([{N: "heart_rate", V: cbor2.CBORTag(4, [100, 5])}]), "not CBOR"),
    (cbor2.dumps([{N: "heart_rate", V: 1.5, T: cbor2.CBORTag(1, 5)}]), "not a number"),
])
def test_what_is_not_senml_is_refused_with_its_reason(payload: bytes, words: str) -> None:
    error = refusal(payload)
    assert error.reason == "malformed" and words in error.detail


def test_oversized_payload_is_refused_before_decoding() -> None:
    assert refusal(b"\x80" * (MAX_PAYLOAD_BYTES + 1)).reason == "oversized"


def check_outcome(payload: bytes) -> None:
    try:
        pack = decode_cbor(payload, received_at=RECEIVED_AT)
    except PayloadError as exc:
        assert exc.reason in {"oversized", "malformed", "unsupported_version"}
        return
    assert len(pack) > 0 and all(pack.metrics)
    assert len(pack.metrics) == len(pack.units) == len(pack.times) == len(pack.values)
    assert all(math.isfinite(x) for x in pack.times + pack.values)


@FUZZ
@given(st.binary(max_size=2048))
def test_decode_of_arbitrary_bytes_gives_a_pack_or_a_payload_error(payload: bytes) -> None:
    check_outcome(payload)


cbor_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                         st.text(max_size=8), st.binary(max_size=8))
cbor_records = st.dictionaries(st.one_of(st.integers(-8, 9), st.text(max_size=4)),
                               cbor_scalars, max_size=6)


@FUZZ
@given(st.lists(st.one_of(cbor_records, cbor_scalars), max_size=8))
def test_decode_of_arbitrary_cbor_structures_gives_a_pack_or_a_payload_error(
        records: list[object]) -> None:
    check_outcome(cbor2.dumps(records))


@FUZZ
@given(st.lists(cbor_records, min_size=1, max_size=8).map(cbor2.dumps), st.data())
def test_flipping_a_byte_of_valid_looking_cbor_never_crashes(payload: bytes,
                                                             data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(payload) - 1))
    mutated = bytearray(payload)
    mutated[index] ^= data.draw(st.integers(1, 255))
    check_outcome(bytes(mutated))
