"""SenML JSON (RFC 8428): base fields, relative times, refusals, and a fuzzed decoder."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitals.catalogue import METRIC_NAMES
from vitals.errors import PayloadError
from vitals.senml import MAX_PAYLOAD_BYTES, MAX_RECORDS, Pack, decode_json, encode_json

RECEIVED_AT = 1_750_000_000.0  # an absolute epoch time, far above 2**28
RELATIVE_LIMIT = 2**28  # RFC 8428 section 4.5.3: smaller times are relative to "now"

# No .hypothesis/ directory in the tree; no deadline, the first call warms caches.
FUZZ = settings(database=None, deadline=None, max_examples=100,
                suppress_health_check=[HealthCheck.too_slow])


def decode(records: object, received_at: float = RECEIVED_AT) -> Pack:
    return decode_json(json.dumps(records).encode(), received_at=received_at)


def refusal(payload: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        decode_json(payload, received_at=RECEIVED_AT)
    return caught.value


# --- base fields and names ---------------------------------------------------------------


def test_base_name_is_prefixed_and_metric_is_the_last_path_segment() -> None:
    pack = decode([{"bn": "urn:dev:watch-12ab:", "n": "heart_rate", "u": "/min", "v": 70,
                    "bt": 1_700_000_000}])
    assert pack.metrics == ["heart_rate"]
    pack = decode([{"bn": "watch-12ab/", "n": "spo2", "u": "%", "v": 97, "bt": 1_700_000_000}])
    assert pack.metrics == ["spo2"]


def test_name_without_base_name_is_the_metric() -> None:
    pack = decode([{"n": "heart_rate", "u": "/min", "v": 70, "t": 1_700_000_000}])
    assert pack.metrics == ["heart_rate"]


def test_base_time_is_added_to_each_record_time() -> None:
    pack = decode([{"bt": 1_700_000_000, "n": "heart_rate", "u": "/min", "v": 70},
                   {"n": "heart_rate", "u": "/min", "v": 71, "t": 1},
                   {"n": "heart_rate", "u": "/min", "v": 72, "t": 2.5}])
    assert pack.times == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.5]


def test_base_unit_applies_to_records_without_a_unit_and_is_overridden_by_u() -> None:
    pack = decode([{"bu": "/min", "bt": 1_700_000_000, "n": "heart_rate", "v": 70},
                   {"n": "body_temperature", "u": "Cel", "v": 37},
                   {"n": "heart_rate", "v": 71}])
    assert pack.units == ["/min", "Cel", "/min"]


def test_base_value_is_added_to_each_value() -> None:
    pack = decode([{"bv": 60, "bt": 1_700_000_000, "n": "heart_rate", "u": "/min", "v": 10},
                   {"n": "heart_rate", "u": "/min", "v": -2.5}])
    assert pack.values == [70.0, 57.5]


def test_base_only_record_is_not_a_measurement_but_sets_the_bases() -> None:
    pack = decode([{"bn": "watch-12ab/", "bt": 1_700_000_000, "bu": "/min"},
                   {"n": "heart_rate", "v": 70}])
    assert (pack.metrics, pack.units, pack.times, pack.values) == (
        ["heart_rate"], ["/min"], [1_700_000_000.0], [70.0])


def test_unknown_field_without_trailing_underscore_is_ignored() -> None:
    pack = decode([{"n": "heart_rate", "u": "/min", "v": 70, "t": 1_700_000_000, "vendor": 1}])
    assert pack.values == [70.0]


# --- relative times (RFC 8428 section 4.5.3) ----------------------------------------------


def test_missing_time_means_now_the_receive_time() -> None:
    pack = decode([{"n": "heart_rate", "u": "/min", "v": 70}])
    assert pack.times == [RECEIVED_AT]


def test_negative_relative_time_is_resolved_against_the_receive_time() -> None:
    pack = decode([{"n": "heart_rate", "u": "/min", "v": 70, "t": -30}])
    assert pack.times == [RECEIVED_AT - 30]


def test_relative_base_time_plus_time_is_resolved_against_the_receive_time() -> None:
    pack = decode([{"bt": -60, "n": "heart_rate", "u": "/min", "v": 70, "t": 10}])
    assert pack.times == [RECEIVED_AT - 50]


def test_time_just_below_two_to_the_28_is_relative_and_at_it_is_absolute() -> None:
    below = decode([{"n": "heart_rate", "u": "/min", "v": 70, "t": RELATIVE_LIMIT - 1}])
    at = decode([{"n": "heart_rate", "u": "/min", "v": 70, "t": RELATIVE_LIMIT}])
    assert below.times == [RECEIVED_AT + RELATIVE_LIMIT - 1]
    assert at.times == [float(RELATIVE_LIMIT)]


# --- refusals ----------------------------------------------------------------------------


def test_payload_over_the_size_limit_is_refused_as_oversized() -> None:
    assert refusal(b" " * (MAX_PAYLOAD_BYTES + 1)).reason == "oversized"


def test_payload_at_exactly_the_size_limit_is_not_refused_for_its_size() -> None:
    body = json.dumps([{"n": "heart_rate", "u": "/min", "v": 70}]).encode()
    pack = decode_json(body.ljust(MAX_PAYLOAD_BYTES), received_at=RECEIVED_AT)
    assert pack.values == [70.0]


def test_too_many_records_are_refused_as_oversized() -> None:
    payload = json.dumps([{}] * (MAX_RECORDS + 1)).encode()
    assert len(payload) <= MAX_PAYLOAD_BYTES  # the record count, not the size, is at fault
    assert refusal(payload).reason == "oversized"


@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b"\xff\xfe\x00", b"[1,]",
                                     b"[" * 100_000 + b"]" * 100_000])
def test_non_json_is_refused_as_malformed(payload: bytes) -> None:
    assert refusal(payload).reason == "malformed"


@pytest.mark.parametrize("document", [{"n": "heart_rate", "v": 70}, "heart_rate", 70, None])
def test_non_array_is_refused_as_malformed(document: object) -> None:
    assert refusal(json.dumps(document).encode()).reason == "malformed"


def test_empty_array_is_refused_as_malformed() -> None:
    assert refusal(b"[]").reason == "malformed"


def test_record_that_is_not_an_object_is_refused() -> None:
    assert refusal(b'[{"n":"heart_rate","v":70}, 3]').reason == "malformed"


@pytest.mark.parametrize("record", [{"n": "heart_rate", "u": "/min"}, {"n": "heart_rate"},
                                    {"u": "/min"}, {"n": "heart_rate", "vs": "seventy"},
                                    {"n": "heart_rate", "vb": True}])
def test_record_with_a_name_or_unit_but_no_numeric_value_is_refused(record: object) -> None:
    assert refusal(json.dumps([record]).encode()).reason == "malformed"


def test_pack_of_base_records_only_is_refused() -> None:
    assert refusal(b'[{"bn":"watch-12ab/","bt":1700000000}]').reason == "malformed"


@pytest.mark.parametrize("field", ["v_", "crit_", "_"])
def test_must_understand_field_is_refused(field: str) -> None:
    record = {"n": "heart_rate", "u": "/min", "v": 70, field: 1}
    assert refusal(json.dumps([record]).encode()).reason == "malformed"


# --- version (RFC 8428 section 4.4) --------------------------------------------------------

@pytest.mark.parametrize("bver", [1, 5, 10])
def test_a_pack_of_version_ten_or_below_is_used(bver: int) -> None:
    pack = decode([{"bver": bver, "n": "heart_rate", "u": "/min", "v": 70}])
    assert pack.values == [70.0]


@pytest.mark.parametrize("where", [0, 1])
def test_a_pack_of_a_version_above_ten_is_refused_as_unsupported(where: int) -> None:
    records: list[dict[str, object]] = [{"n": "heart_rate", "u": "/min", "v": 70},
                                        {"n": "heart_rate", "u": "/min", "v": 71, "t": 1}]
    records[where]["bver"] = 11
    error = refusal(json.dumps(records).encode())
    assert error.reason == "unsupported_version" and "11" in error.detail


@pytest.mark.parametrize("bver", ["10", 10.0, 10.5, True, None, 0, -1, [10], 2**70])
def test_a_version_that_is_not_a_positive_integer_is_refused(bver: object) -> None:
    payload = json.dumps([{"bver": bver, "n": "heart_rate", "v": 70}]).encode()
    assert refusal(payload).reason == "unsupported_version"


def test_must_understand_field_in_a_base_only_record_is_refused() -> None:
    payload = json.dumps([{"bt": 1_700_000_000, "bcrit_": 1},
                          {"n": "heart_rate", "v": 70}]).encode()
    assert refusal(payload).reason == "malformed"


@pytest.mark.parametrize("records", [[{"v": 70}], [{"bn": "watch-12ab/", "v": 70}],
                                     [{"n": "", "v": 70}]])
def test_record_without_a_metric_name_is_refused(records: object) -> None:
    assert refusal(json.dumps(records).encode()).reason == "malformed"


@pytest.mark.parametrize("field", ["n", "u", "bn", "bu"])
def test_text_field_that_is_not_a_short_string_is_refused(field: str) -> None:
    for bad in (7, None, ["heart_rate"], "x" * 257):
        record: dict[str, object] = {"n": "heart_rate", "u": "/min", "v": 70, field: bad}
        assert refusal(json.dumps([record]).encode()).reason == "malformed"


@pytest.mark.parametrize("field", ["v", "t", "bt", "bv"])
@pytest.mark.parametrize("raw", ["true", "false", "null", '"70"', "[70]", "{}",
                                 "NaN", "Infinity", "-Infinity", "1e400", "-1e400",
                                 "1" + "0" * 400, "-1" + "0" * 400])
def test_numeric_field_that_is_bool_non_number_or_not_finite_is_refused(field: str,
                                                                         raw: str) -> None:
    fields = {"n": '"heart_rate"', "u": '"/min"', "v": "70"}
    fields[field] = raw
    payload = ("[{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}]").encode()
    assert refusal(payload).reason == "malformed"


def test_integer_longer_than_pythons_digit_limit_is_refused_as_a_payload_error() -> None:
    # json.loads raises a plain ValueError ("Exceeds the limit (4300 digits) for integer
    # string conversion") for such a literal: the decoder must still answer PayloadError,
    # or a 5 kB message crashes the consumer instead of being quarantined.
    payload = b'[{"n":"heart_rate","u":"/min","v":' + b"9" * 5000 + b"}]"
    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert refusal(payload).reason == "malformed"


@pytest.mark.parametrize("record", [
    {"n": "heart_rate", "u": "/min", "bv": 1.7e308, "v": 1.7e308},
    {"n": "heart_rate", "u": "/min", "bv": -1.7e308, "v": -1.7e308},
    {"n": "heart_rate", "u": "/min", "v": 70, "bt": 1.7e308, "t": 1.7e308},
])
def test_base_plus_record_overflowing_to_infinity_is_refused(record: object) -> None:
    # Each field is finite, the resolved value or time is not: still a non-finite number.
    assert refusal(json.dumps([record]).encode()).reason == "malformed"


# --- encode -> decode ----------------------------------------------------------------------

base_names = st.from_regex(r"[a-z0-9-]{1,20}[/:]", fullmatch=True)
metric_names = st.one_of(st.sampled_from(METRIC_NAMES),
                         st.from_regex(r"[a-z_]{1,30}", fullmatch=True))
units = st.text(max_size=30)
finite = st.floats(allow_nan=False, allow_infinity=False)
records = st.lists(
    st.tuples(metric_names, units,
              st.integers(1_500_000_000_000, 2_000_000_000_000).map(lambda ms: ms / 1000),
              finite),
    min_size=1, max_size=30)


@FUZZ
@given(base_name=base_names, records=records)
def test_encode_then_decode_gives_back_the_records(
        base_name: str, records: list[tuple[str, str, float, float]]) -> None:
    pack = decode_json(encode_json(base_name, records), received_at=RECEIVED_AT)
    assert pack.metrics == [r[0] for r in records]
    assert pack.units == [r[1] for r in records]
    assert pack.values == [r[3] for r in records]
    assert pack.times == pytest.approx([r[2] for r in records], abs=1e-3)


def test_encode_of_no_records_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        encode_json("watch-12ab/", [])


# --- fuzzing: a Pack or a PayloadError, nothing else ---------------------------------------


def check_outcome(payload: bytes) -> None:
    try:
        pack = decode_json(payload, received_at=RECEIVED_AT)
    except PayloadError as exc:
        assert exc.reason in {"oversized", "malformed", "unsupported_version"}
        return
    assert isinstance(pack, Pack)
    assert len(pack) > 0
    assert len(pack.metrics) == len(pack.units) == len(pack.times) == len(pack.values)
    assert all(pack.metrics)
    assert all(math.isfinite(x) for x in pack.times + pack.values)


@settings(FUZZ, max_examples=1000)
@given(st.binary(max_size=4096))
def test_decode_of_arbitrary_bytes_gives_a_pack_or_a_payload_error(payload: bytes) -> None:
    check_outcome(payload)


leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                   st.integers(min_value=2**1023, max_value=2**1100))
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6),
                                                                      inner, max_size=5),
    max_leaves=15)
senml_keys = st.sampled_from(["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "t", "ut",
                              "vs", "vb", "x_", "other"])
senml_records = st.dictionaries(senml_keys, st.one_of(json_values, st.sampled_from(
    ["heart_rate", "/min", "watch-1/", "", 1.7e308, -1.7e308, 2**28, -(2**28)])), max_size=8)


@FUZZ
@given(st.one_of(json_values, st.lists(senml_records, max_size=8)))
def test_decode_of_arbitrary_json_gives_a_pack_or_a_payload_error(document: object) -> None:
    check_outcome(json.dumps(document).encode())


@FUZZ
@given(st.lists(senml_records, min_size=1, max_size=8), st.integers(0, 40))
def test_decode_of_truncated_senml_gives_a_pack_or_a_payload_error(
        document: list[object], cut: int) -> None:
    payload = json.dumps(document).encode()
    check_outcome(payload[:max(0, len(payload) - cut)])
