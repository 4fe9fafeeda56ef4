"""SenML (RFC 8428) in JSON and CBOR: decode a device's measurement pack, encode one for the
simulators. Both representations decode to the same records and go through one validation.

A pack of a SenML version above 10 (``bver``) is refused as ``unsupported_version``.

Names resolve as base name + name; the metric is the part after the last ``/`` or ``:``, so
``{"bn": "w-12ab/", "n": "heart_rate"}`` and ``{"n": "heart_rate"}`` both mean heart rate.
Times resolve as base time + time in seconds; RFC 8428 makes values below 2**28 relative to
"now", which the decoder resolves against the receive time it is given.

JSON is decoded twice over, in effect: a fast path parses the common shape (an array of
objects with the known fields, numbers where numbers go) with msgspec typed structs, and
anything it is not sure of, refusals included, goes to the general decoder, which is the
definition of the answer (tests/unit/test_senml_fast.py checks that both agree on any input).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import astuple

from vitals.errors import PayloadError

CONTENT_TYPE_JSON = "application/senml+json"
CONTENT_TYPE_CBOR = "application/senml+cbor"
MAX_PAYLOAD_BYTES = 256 * 1024  # a day of 1 Hz heart rate fits; more is a broken device
MAX_RECORDS = 20_000
_RELATIVE_TIME_LIMIT = 2**28  # RFC 8428 section 4.5.3
_KNOWN_FIELDS = frozenset({"bn", "bt", "bu", "bv", "bver", "n", "u", "v", "t", "ut"})
# RFC 8428 section 6: the CBOR representation labels the fields with integers.
_CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", 0: "n", 1: "u", 2: "v",
                6: "t", 7: "ut", 3: "vs", 4: "vb", 5: "s", 8: "vd", -6: "bs"}
_CBOR_NAMES = {name: label for label, name in _CBOR_LABELS.items()}
_MAX_TEXT = 256  # names and units are short; a longer one is not SenML from a device
_CBOR_MAX_DEPTH = 3  # array of maps of scalars: anything deeper is not SenML
# RFC 8428 section 4.4: this codec implements version 10 (the default); earlier versions
# are subsets of it, and a pack of a later one must not be used.
SENML_VERSION = 10


@dataclass(frozen=True, slots=True)
class Pack:
    """A decoded pack in columns, ready for vectorised normalisation."""

    metrics: list[str]
    units: list[str]
    times: list[float]  # seconds since the epoch, device clock
    values: list[float]

    def __len__(self) -> int:
        return len(self.values)


def decode_json(payload: bytes, *, received_at: float) -> Pack:
    """Decode a SenML JSON pack; raises PayloadError naming the first problem found."""
    _check_size(payload)
    try:
        records = _FAST_JSON.decode(payload)
    except msgspec.MsgspecError:
        pass  # an unusual shape, or not SenML: the general decoder says which
    else:
        pack = _fast_records(records, received_at)
        if pack is not None:
            return pack
    return _decode_json_general(payload, received_at)


def _decode_json_general(payload: bytes, received_at: float) -> Pack:
    """decode_json without its fast path: every input, the definition of the answer."""
    try:
        records = json.loads(payload)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and integers over Python's
    # digit limit; a payload must never escape as anything but PayloadError.
    except (ValueError, RecursionError) as exc:
        raise PayloadError("malformed", f"not JSON: {type(exc).__name__}") from None
    return _decode_records(records, received_at)


def decode_cbor(payload: bytes, *, received_at: float) -> Pack:
    """Decode a SenML CBOR pack (integer labels); raises PayloadError like decode_json."""
    _check_size(payload)
    try:
        records = cbor2.loads(payload, max_depth=_CBOR_MAX_DEPTH, allow_indefinite=False,
                              allow_duplicate_keys=False)
    # cbor2 raises its own errors and, from its semantic tags (bignums, decimals, dates),
    # arithmetic and value errors too: for untrusted bytes, any of them means "malformed".
    except Exception as exc:
        raise PayloadError("malformed", f"not CBOR: {type(exc).__name__}") from None
    if isinstance(records, list):
        records = [_cbor_record(r) for r in records]
    return _decode_records(records, received_at)


def _cbor_record(record: object) -> object:
    if not isinstance(record, dict):
        return record  # _decode_records names the problem
    # Unknown integer labels, like unknown JSON fields, are ignored; strings stay strings,
    # so must-understand names ending in "_" are still refused.
    return {_cbor_key(k): v for k, v in record.items()}


def _cbor_key(key: object) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return _CBOR_LABELS.get(key, f"label {key}")
    return key if isinstance(key, str) else repr(key)


DECODERS: dict[str, Callable[..., Pack]] = {CONTENT_TYPE_JSON: decode_json,
                                            CONTENT_TYPE_CBOR: decode_cbor}


def _check_size(payload: bytes) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")


def _decode_records(records: Any, received_at: float) -> Pack:
    if not isinstance(records, list) or not records:
        raise PayloadError("malformed", "a SenML pack is a non-empty array")
    if len(records) > MAX_RECORDS:
        raise PayloadError("oversized", f"{len(records)} records > {MAX_RECORDS}")

    metrics: list[str] = []
    units: list[str] = []
    times: list[float] = []
    values: list[float] = []
    metric_of: dict[str, str] = {}  # full name -> metric: a pack repeats a few names
    base_name, base_time, base_unit, base_value = "", 0.0, "", 0.0
    # The loop runs once per sample: the common case (a float or an int, a short string)
    # is checked inline; anything else goes through the thorough helpers, which raise.
    for index, record in enumerate(records):
        if type(record) is not dict:
            raise PayloadError("malformed", f"record {index} is not an object")
        if not _KNOWN_FIELDS.issuperset(record) and any(
                key.endswith("_") for key in record.keys() - _KNOWN_FIELDS):
            raise PayloadError("malformed", f"record {index} has must-understand fields")
        if "bver" in record:
            _check_version(record["bver"], index)
        if "bn" in record:
            base_name = _text(record, "bn", index)
        if "bt" in record:
            base_time = _number(record, "bt", index)
        if "bu" in record:
            base_unit = _text(record, "bu", index)
        if "bv" in record:
            base_value = _number(record, "bv", index)
        if "v" not in record:
            if "n" in record or "u" in record:
                raise PayloadError("malformed", f"record {index} has no numeric value 'v'")
            continue  # a base-only record
        name = base_name
        if "n" in record:
            n = record["n"]
            name += n if type(n) is str and len(n) <= _MAX_TEXT else _text(record, "n", index)
        metric = metric_of.get(name)
        if metric is None:
            metric = metric_of[name] = name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        if not metric:
            raise PayloadError("malformed", f"record {index} has no name")
        time = base_time
        if "t" in record:
            t = record["t"]
            time += t if type(t) is float else _number(record, "t", index)
        if -_RELATIVE_TIME_LIMIT < time < _RELATIVE_TIME_LIMIT:
            time += received_at
        v = record["v"]
        value = base_value + (v if type(v) is float else _number(record, "v", index))
        # One check covers NaN and infinities in a float field (JSON's NaN, Infinity, 1e400)
        # and finite parts whose sum overflows; _number has refused non-finite others.
        if not (math.isfinite(time) and math.isfinite(value)):
            raise PayloadError("malformed", f"record {index} resolves to a non-finite number")
        metrics.append(metric)
        if "u" in record:
            u = record["u"]
            units.append(u if type(u) is str and len(u) <= _MAX_TEXT else _text(record, "u", index))
        else:
            units.append(base_unit)
        times.append(time)
        values.append(value)
    if not values:
        raise PayloadError("malformed", "the pack holds no measurement")
    return Pack(metrics, units, times, values)


def encode_json(base_name: str, records: Sequence[tuple[str, str, float, float]]) -> bytes:
    """Encode (metric, unit, time, value) records as a compact SenML JSON pack."""
    return json.dumps(_encode_records(base_name, records), separators=(",", ":")).encode()


def encode_cbor(base_name: str, records: Sequence[tuple[str, str, float, float]]) -> bytes:
    """The same pack as encode_json, in SenML CBOR with integer labels."""
    return cbor2.dumps([{_CBOR_NAMES[k]: v for k, v in r.items()}
                        for r in _encode_records(base_name, records)])


def _encode_records(base_name: str, records: Sequence[tuple[str, str, float, float]]
                    ) -> list[dict[str, object]]:
    if not records:
        raise ValueError("a SenML pack needs at least one record")
    base_time = records[0][2]
    out: list[dict[str, object]] = []
    for metric, unit, time, value in records:
        entry: dict[str, object] = {"n": metric, "u": unit, "v": value}
        if time != base_time:
            entry["t"] = round(time - base_time, 3)
        out.append(entry)
    out[0] = {"bn": base_name, "bt": base_time, **out[0]}
    return out


class _Record(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A SenML record of the common shape. UNSET: the field is absent. An unknown field, a
    null, a bool or a string where a number goes fails the decoding (then the general
    decoder decides); ints are read as floats, as float() would."""

    bn: str | UnsetType = UNSET
    bt: float | UnsetType = UNSET
    bu: str | UnsetType = UNSET
    bv: float | UnsetType = UNSET
    bver: int | UnsetType = UNSET
    n: str | UnsetType = UNSET
    u: str | UnsetType = UNSET
    v: float | UnsetType = UNSET
    t: float | UnsetType = UNSET
    ut: Any = UNSET  # read by nobody: any JSON value (as the general decoder ignores it)
    # gc=False: a pack's records are never in a cycle, and 60 tracked objects a message were
    # what set the collector off on the hot path.


_FAST_JSON = msgspec.json.Decoder(list[_Record])


def _fast_records(records: list[_Record], received_at: float) -> Pack | None:
    """The Pack of ``records``, computed as _decode_records does, or None wherever that
    would refuse them or where a number is not finite (the general decoder then answers,
    with its reason)."""
    if not records or len(records) > MAX_RECORDS:
        return None
    return _columns(records, received_at) or _rows(records, received_at)


def _columns(records: list[_Record], received_at: float) -> Pack | None:
    """The usual pack, a column at a time: base fields in the first record only, a value
    in every record, absolute times. None for any other (then ``_rows``)."""
    size = len(records)
    # The records turned into columns in C, field by field (_Record's order).
    bn, bt, bu, bv, bver, n, u, v, t, _ = zip(*map(astuple, records), strict=True)
    if bver[0] is not UNSET and not 0 < bver[0] <= SENML_VERSION:
        return None
    for base in (bn, bt, bu, bv, bver):
        if base.count(UNSET) != size - (base[0] is not UNSET):
            return None
    if UNSET in v:
        return None
    base_name = "" if bn[0] is UNSET else bn[0]
    base_time = 0.0 if bt[0] is UNSET else bt[0]
    base_unit = "" if bu[0] is UNSET else bu[0]
    base_value = 0.0 if bv[0] is UNSET else bv[0]
    if len(base_name) > _MAX_TEXT or len(base_unit) > _MAX_TEXT:
        return None
    metric_of: dict[str | UnsetType, str] = {}
    for name in set(n):
        if name is UNSET:
            full = base_name
        elif len(name) <= _MAX_TEXT:
            full = base_name + name
        else:
            return None
        metric = metric_of[name] = full.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        if not metric:
            return None
    units = list(u) if UNSET not in u else [base_unit if x is UNSET else x for x in u]
    if max(map(len, set(units))) > _MAX_TEXT:
        return None
    times = [base_time if x is UNSET else base_time + x for x in t]
    values = [base_value + x for x in v]
    # A sum is finite only if every term is (an overflowing sum sends a finite pack to _rows,
    # which is right too); times below 2**28 are relative: _rows resolves them.
    if not (math.isfinite(sum(times)) and math.isfinite(sum(values))
            and min(times) >= _RELATIVE_TIME_LIMIT):
        return None
    metrics = ([metric_of[n[0]]] * size if len(metric_of) == 1
               else [metric_of[name] for name in n])
    return Pack(metrics, units, times, values)


def _rows(records: list[_Record], received_at: float) -> Pack | None:
    """The Pack of ``records``, a record at a time: any shape the fast path reads."""
    metrics: list[str] = []
    units: list[str] = []
    times: list[float] = []
    values: list[float] = []
    metric_of: dict[str, str] = {}
    base_name, base_time, base_unit, base_value = "", 0.0, "", 0.0
    isfinite = math.isfinite
    for r in records:
        if r.bver is not UNSET and not 0 < r.bver <= SENML_VERSION:
            return None
        if r.bn is not UNSET:
            if len(r.bn) > _MAX_TEXT:
                return None
            base_name = r.bn
        if r.bt is not UNSET:
            if not isfinite(r.bt):
                return None
            base_time = r.bt
        if r.bu is not UNSET:
            if len(r.bu) > _MAX_TEXT:
                return None
            base_unit = r.bu
        if r.bv is not UNSET:
            if not isfinite(r.bv):
                return None
            base_value = r.bv
        n, u, v, t = r.n, r.u, r.v, r.t
        if v is UNSET:
            if n is not UNSET or u is not UNSET:
                return None
            continue
        if n is UNSET:
            name = base_name
        elif len(n) <= _MAX_TEXT:
            name = base_name + n
        else:
            return None
        metric = metric_of.get(name)
        if metric is None:
            metric = metric_of[name] = name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        if not metric:
            return None
        time = base_time if t is UNSET else base_time + t
        if -_RELATIVE_TIME_LIMIT < time < _RELATIVE_TIME_LIMIT:
            time += received_at
        value = base_value + v
        if not (isfinite(time) and isfinite(value)):
            return None
        if u is UNSET:
            u = base_unit
        elif len(u) > _MAX_TEXT:
            return None
        metrics.append(metric)
        units.append(u)
        times.append(time)
        values.append(value)
    if not values:
        return None
    return Pack(metrics, units, times, values)


def _check_version(bver: object, index: int) -> None:
    # A positive integer (RFC 8428 section 4.4); JSON's 10.0 and true are not, and a version
    # we cannot read is as unknown to us as one above ours.
    if type(bver) is not int or not 0 < bver <= SENML_VERSION:
        raise PayloadError("unsupported_version",
                           f"record {index}: bver {str(bver)[:20]!r}, this decoder reads"
                           f" versions 1 to {SENML_VERSION}")


def _text(record: dict[str, object], key: str, index: int) -> str:
    value = record[key]
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise PayloadError("malformed", f"record {index} field {key!r} is not a short string")
    return value


def _number(record: dict[str, object], key: str, index: int) -> float:
    value = record[key]
    # bool is an int in Python, never a measurement
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError("malformed", f"record {index} field {key!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a double
        number = math.inf
    if not math.isfinite(number):
        raise PayloadError("malformed", f"record {index} field {key!r} is not finite")
    return number
