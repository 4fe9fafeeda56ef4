"""SenML JSON's fast path (msgspec typed structs) gives exactly the general decoder's answer
or refusal, for any input: the same Pack, float for float to the bit (a -0.0 is not a 0.0),
or the same PayloadError reason and detail. Inputs: raw bytes, JSON of records with known
and unknown fields and values of every JSON type (duplicate keys, huge integers, NaN and
Infinity, long and odd strings), and packs as devices send them."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vitals.errors import PayloadError
from vitals.senml import _FAST_JSON, _decode_json_general, _fast_records, decode_json, encode_json

RECEIVED_AT = 1_750_000_000.0
PROPS = settings(database=None, deadline=None, max_examples=400,
                 suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[Any, ...]


def _bits(xs: list[float]) -> list[bytes]:
    return [struct.pack("<d", x) for x in xs]


def outcome(fast: bool, payload: bytes) -> Outcome:
    """What a decoder answers; anything but a Pack or a PayloadError fails the test."""
    try:
        if fast:
            pack = decode_json(payload, received_at=RECEIVED_AT)
        else:
            pack = _decode_json_general(payload, RECEIVED_AT)
    except PayloadError as exc:
        return ("refused", exc.reason, exc.detail)
    return ("pack", pack.metrics, pack.units, _bits(pack.times), _bits(pack.values))


def assert_same(payload: bytes) -> None:
    assert outcome(True, payload) == outcome(False, payload)


FIELDS = ["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "t", "ut"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e10, max_value=2e9),
    st.sampled_from([0, -0.0, 0.0, 10, 11, 10.0, 2**28, 2**28 - 1, -(2**28), 1e308, 5e-324]),
    st.text(max_size=4), st.text(min_size=250, max_size=300),
    st.sampled_from(["heart_rate", "/min", "kg", "w-1/", "urn:dev:x:", "a/", "", "x_"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS),
                 st.sampled_from(["vs", "vb", "s", "x_", "foo", "V", ""]), st.text(max_size=4))
# A record as key/value pairs: a key may repeat, as raw JSON allows.
records = st.lists(st.tuples(keys, values), max_size=7)


def _dumps(value: object, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as Python writes


def raw_json(pack: list[list[tuple[str, object]]] | object, ascii_only: bool, space: str
             ) -> bytes:
    if not isinstance(pack, list):
        text = _dumps(pack, ascii_only)
    else:
        text = "[" + f",{space}".join(
            "{" + f",{space}".join(f"{_dumps(k, ascii_only)}:{space}{_dumps(v, ascii_only)}"
                                   for k, v in record) + "}"
            if isinstance(record, list) else _dumps(record, ascii_only)
            for record in pack) + "]"
    return text.encode("utf-8", "surrogatepass")


@PROPS
@given(st.binary(max_size=300))
def test_any_bytes(payload: bytes) -> None:
    assert_same(payload)


@PROPS
@given(st.one_of(st.lists(st.one_of(records, scalars), max_size=6), scalars),
       st.booleans(), st.sampled_from(["", " ", "\n\t"]))
@example([[("v", 1), ("v", True)]], True, "")
@example([[("bver", 10.0), ("v", 1)]], True, "")
@example([[("n", "a"), ("n", "b"), ("v", 2)]], True, "")
@example([[("t", 1e400), ("bn", "x/")], [("n", "y"), ("v", 1)]], True, "")
@example([[("v", 10**400)]], True, "")
@example([[("v", 9007199254740993)]], True, "")
@example([[("bv", -0.0), ("v", -0.0), ("t", -0.0)]], True, "")
@example([[("ut", float("nan")), ("v", 1)]], True, "")
@example([[("n", "\ud800"), ("v", 1)]], False, "")
def test_any_json(pack: object, ascii_only: bool, space: str) -> None:
    assert_same(raw_json(pack, ascii_only, space))


# Near the common shape: known fields only, values mostly of their type, at the edges.
numbers = st.one_of(st.floats(min_value=-1e9, max_value=2e9), st.integers(-(2**30), 2**31),
                    st.sampled_from([0, -0.0, 2**28, 2**28 - 1, -(2**28) + 1, 1e308, -1e308,
                                     2**1100, 5e-324]))
texts = st.one_of(st.sampled_from(["heart_rate", "/min", "w-1/", "a:", "x/", "", ":", "kg"]),
                  st.text(max_size=3), st.text(min_size=255, max_size=257))
near = {"bn": texts, "bu": texts, "n": texts, "u": texts, "bt": numbers, "bv": numbers,
        "t": numbers, "v": numbers,
        "bver": st.sampled_from([-1, 0, 1, 10, 11, 10.0]), "ut": scalars}
near_records = st.lists(st.sampled_from(FIELDS), max_size=6, unique=True).flatmap(
    lambda fields: _record(fields))


@PROPS
@given(st.lists(near_records, min_size=1, max_size=6), st.booleans())
@example([[("bver", 0), ("n", "hr"), ("v", 1)]], True)
@example([[("bn", "w/"), ("u", "kg")]], True)
@example([[("bt", 1e308), ("t", 1e308), ("n", "hr"), ("v", 1)]], True)
@example([[("n", "hr"), ("u", "k" * 257), ("v", 1)]], True)
def test_near_the_common_shape(pack: list[list[tuple[str, object]]], ascii_only: bool
                               ) -> None:
    assert_same(raw_json(pack, ascii_only, ""))


def _record(fields: list[str]) -> st.SearchStrategy[list[tuple[str, object]]]:
    return st.tuples(*(st.tuples(st.just(f), near[f]) for f in fields)).map(list)


# The usual shape, a pack that the column-at-a-time path reads: base fields in the first
# record, a value in every record; now and then a base field later on, or a missing value.
usual_first = st.lists(st.sampled_from(["bn", "bt", "bu", "bv", "bver", "n", "u", "t"]),
                       unique=True).map(lambda fs: [*fs, "v"]).flatmap(_record)
usual_rest = st.lists(st.one_of(
    st.lists(st.sampled_from(["n", "u", "t"]), unique=True).map(lambda fs: [*fs, "v"]),
    st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)),
    max_size=5).flatmap(lambda rows: st.tuples(*(_record(fs) for fs in rows)).map(list))


@PROPS
@given(usual_first, usual_rest)
@example([("bver", 11), ("bn", "w/"), ("v", 1)], [])
@example([("bn", "w/"), ("bt", 2**29), ("bu", "k" * 257), ("n", "x"), ("v", 1)], [])
@example([("bn", "w/"), ("bt", 2**29), ("bu", "k" * 257), ("n", "x"), ("u", "kg"), ("v", 1)],
         [])
@example([("bn", "w/"), ("bt", 2**29), ("n", "x"), ("u", "k" * 257), ("v", 1)], [])
@example([("bn", "w/"), ("bt", 2**29), ("n", "x"), ("v", 1)], [[("bu", "kg"), ("n", "y"),
                                                                  ("v", 2)]])
@example([("bn", "w/"), ("bt", 2**29), ("n", "x"), ("v", 1)], [[("bver", 11), ("n", "y"),
                                                                  ("v", 2)]])
def test_packs_of_the_usual_shape(first: list[tuple[str, object]],
                                  rest: list[list[tuple[str, object]]]) -> None:
    assert_same(raw_json([first, *rest], True, ""))


@PROPS
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-:/", max_size=12),
       st.lists(st.tuples(st.sampled_from(["heart_rate", "weight", "spo2", "x/y", ""]),
                          st.sampled_from(["/min", "kg", "%", "Cel", ""]),
                          st.floats(min_value=0, max_value=2e9),
                          st.floats(allow_nan=False, allow_infinity=False)),
                min_size=1, max_size=80))
def test_packs_as_devices_send_them(base: str,
                                    samples: list[tuple[str, str, float, float]]) -> None:
    payload = encode_json(base, samples)
    assert_same(payload)
    if outcome(False, payload)[0] == "pack":  # and the fast path is the one that answered
        assert _fast_records(_FAST_JSON.decode(payload), RECEIVED_AT) is not None


@pytest.mark.parametrize("payload", [
    b'[{"bn":"w-1/","bt":1.7e9,"n":"heart_rate","u":"/min","v":60},{"n":"heart_rate","v":61,"t":1}]',
    b'[{"bver":11,"v":1}]', b"[]", b"{}", b'[{"v":NaN}]', b'\xef\xbb\xbf[{"v":1}]',
    b'[{"n":"a","u":"b"}]', b'[{"bn":"x"}]', b'[{"v":1,"x_":2}]', b'[{"v":1,"vs":"a"}]',
    '[{"n":"\u00e9","v":1}]'.encode("utf-16"),
])
def test_shapes_named(payload: bytes) -> None:
    assert_same(payload)
