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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from storage.errors import IntegrityError

_HEADER = struct.Struct("<BIq")
_VERSION = 2


@dataclass(slots=True)  # not frozen: see storage.store.MessageIn
class Samples:
    t_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.t_ms)


_SCALE = struct.Struct("<b")
# zlib levels. Ingestion writes fast: on a minute of heart rate, level 1 takes 40% of level
# 9's time (zlib was 12 us of a message's 180) for about 15% more bytes. Compaction, which
# rewrites each source's day of segments into one, writes small, and is what stays.
LEVEL_INGEST = 1
LEVEL_COMPACT = 9
_MAX_DECIMALS = 3


def pack(samples: Samples, level: int = LEVEL_COMPACT) -> bytes:
    """Version 2: values on a decimal grid are stored as deltas of scaled integers; others
    as float64 (scale byte -1). Both round-trip exactly, at any zlib ``level``."""
    return pack_many([samples], level)[0]


def pack_many(segments: Sequence[Samples], level: int = LEVEL_COMPACT) -> list[bytes]:
    """``pack`` of each segment, the numpy work done once for all of them: a batch of
    messages costs a few array operations, not a few per segment (numpy's fixed cost per
    call is what packing one minute of samples at a time spent its time on)."""
    if not segments:
        return []
    counts = np.fromiter((len(s) for s in segments), dtype=np.intp, count=len(segments))
    if not counts.all():
        raise ValueError("an empty segment is never stored")
    starts = np.zeros(len(segments), dtype=np.intp)
    np.cumsum(counts[:-1], out=starts[1:])
    t = np.concatenate([s.t_ms for s in segments]).astype("<i8", copy=False)
    v = np.concatenate([s.value for s in segments]).astype(np.float64, copy=False)
    decimals = _decimal_scales(v, starts)
    per_sample = np.repeat(decimals, counts)
    on_grid = per_sample >= 0
    # Values on a grid: deltas of scaled integers, each segment's first against 0.
    scaled = np.zeros(len(v), dtype=np.int64)
    scaled[on_grid] = np.round(v[on_grid] * 10.0 ** per_sample[on_grid])
    deltas = np.empty(len(v), dtype="<i8")
    deltas[0] = scaled[0]
    np.subtract(scaled[1:], scaled[:-1], out=deltas[1:])
    deltas[starts] = scaled[starts]
    # Each segment's own bytes are slices of these (8 bytes a sample, 1 for a flag).
    t_deltas = memoryview(np.diff(t).astype("<i8").tobytes())
    as_ints = memoryview(deltas.tobytes())
    as_floats = memoryview(v.astype("<f8").tobytes())
    flags = memoryview(np.concatenate([s.flags for s in segments]).astype("u1").tobytes())
    out = []
    for start, n, scale, t0 in zip(starts.tolist(), counts.tolist(), decimals.tolist(),
                                   t[starts].tolist(), strict=True):
        end = start + n
        values = as_floats if scale < 0 else as_ints
        out.append(zlib.compress(b"".join((
            _HEADER.pack(_VERSION, n, t0), _SCALE.pack(scale),
            t_deltas[start * 8:(end - 1) * 8], values[start * 8:end * 8], flags[start:end])),
            level))
    return out


def _decimal_scales(values: npt.NDArray[np.float64], starts: npt.NDArray[np.intp
                                                                         ]) -> npt.NDArray[np.int8]:
    """Per segment (``starts``: where each begins in ``values``), the fewest decimals (0 to
    3) that hold every value exactly, or -1. Devices report on a grid (bpm, 0.1 kg,
    0.1 degC): as integers, and as deltas of them, such values compress several times
    better than their float64 bytes."""
    with np.errstate(invalid="ignore", over="ignore"):
        # Not finite, too large for an exact integer, or -0.0 (would come back as 0.0).
        unfit = (~np.isfinite(values) | (np.abs(values) > 1e12)
                 | (np.signbit(values) & (values == 0)))
        decimals = np.where(np.logical_or.reduceat(unfit, starts), -2, -1).astype(np.int8)
        for d in range(_MAX_DECIMALS + 1):
            exact = np.round(values * 10**d) / 10**d == values
            fits = np.logical_and.reduceat(exact, starts) & (decimals == -1)
            decimals[fits] = d
    decimals[decimals == -2] = -1
    return decimals


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
