"""Pack a run of samples into a compact byte string, and back.

Layout (little endian): version u8, count u32, first time i64 ms, a decimal scale i8, then
the time deltas (i64 ms), the values and the flags (u8), the whole zlib-compressed. Values
on a decimal grid (scale 0-3) are stored as deltas of integers, others as f64 (scale -1).
Regular sampling makes the time deltas nearly constant and slowly varying signals make the
value deltas small: that is what lets the compressor shrink them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from storage.errors import IntegrityError

_HEADER = struct.Struct("<BIq")
_VERSION = 2


@dataclass(frozen=True, slots=True)
class Samples:
    t_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.t_ms)


_SCALE = struct.Struct("<b")
_MAX_DECIMALS = 3


def _decimal_scale(values: npt.NDArray[np.float64]) -> int | None:
    """The fewest decimals (0 to 3) that hold every value exactly, or None. Devices report
    on a grid (bpm, 0.1 kg, 0.1 degC): as integers, and as deltas of them, such values
    compress several times better than their float64 bytes."""
    if (not np.all(np.isfinite(values)) or np.abs(values).max(initial=0) > 1e12
            or np.any(np.signbit(values) & (values == 0))):  # -0.0 would come back as 0.0
        return None
    for decimals in range(_MAX_DECIMALS + 1):
        scaled = np.round(values * 10**decimals)
        if np.array_equal(scaled / 10**decimals, values):
            return decimals
    return None


def pack(samples: Samples) -> bytes:
    """Version 2: values on a decimal grid are stored as deltas of scaled integers; others
    as float64 (scale byte -1). Both round-trip exactly."""
    n = len(samples)
    if n == 0:
        raise ValueError("an empty segment is never stored")
    t = samples.t_ms.astype("<i8", copy=False)
    decimals = _decimal_scale(samples.value)
    if decimals is None:
        values = samples.value.astype("<f8", copy=False).tobytes()
    else:
        scaled = np.round(samples.value * 10**decimals).astype(np.int64)
        values = np.diff(scaled, prepend=np.int64(0)).astype("<i8").tobytes()
    body = (_HEADER.pack(_VERSION, n, int(t[0]))
            + _SCALE.pack(-1 if decimals is None else decimals)
            + np.diff(t).astype("<i8").tobytes() + values
            + samples.flags.astype("u1", copy=False).tobytes())
    return zlib.compress(body, 9)


def unpack(blob: bytes) -> Samples:
    try:
        body = zlib.decompress(blob)
        version, n, t0 = _HEADER.unpack_from(body)
    except (zlib.error, struct.error):
        raise IntegrityError("not a packed segment") from None
    offset = _HEADER.size
    decimals = -1
    if version == _VERSION and len(body) > offset:
        (decimals,) = _SCALE.unpack_from(body, offset)
        offset += _SCALE.size
    elif version != 1:  # version 1: float64 values and no scale byte
        raise IntegrityError("packed segment has an unknown layout")
    if len(body) != offset + (n - 1) * 8 + n * 8 + n or not -1 <= decimals <= _MAX_DECIMALS:
        raise IntegrityError("packed segment has an unknown layout")
    deltas = np.frombuffer(body, "<i8", n - 1, offset)
    offset += (n - 1) * 8
    if decimals < 0:
        values = np.frombuffer(body, "<f8", n, offset).astype(np.float64)
    else:
        values = np.cumsum(np.frombuffer(body, "<i8", n, offset)) / 10**decimals
    offset += n * 8
    flags = np.frombuffer(body, "u1", n, offset)
    t = np.empty(n, dtype=np.int64)
    t[0] = t0
    np.cumsum(deltas, out=t[1:])
    t[1:] += t0
    return Samples(t, values.astype(np.float64), flags.astype(np.uint8))
