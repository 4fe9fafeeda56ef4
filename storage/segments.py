"""Pack a run of samples into a compact byte string, and back.

Layout (little endian): version u8, count u32, first time i64 ms, then the time deltas
(i64 ms), the values (f64) and the flags (u8), the whole zlib-compressed. Regular sampling
makes the deltas nearly constant, which is what lets the compressor shrink them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from storage.errors import IntegrityError

_HEADER = struct.Struct("<BIq")
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Samples:
    t_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.t_ms)


def pack(samples: Samples) -> bytes:
    n = len(samples)
    if n == 0:
        raise ValueError("an empty segment is never stored")
    t = samples.t_ms.astype("<i8", copy=False)
    body = (_HEADER.pack(_VERSION, n, int(t[0])) + np.diff(t).astype("<i8").tobytes()
            + samples.value.astype("<f8", copy=False).tobytes()
            + samples.flags.astype("u1", copy=False).tobytes())
    return zlib.compress(body, 6)


def unpack(blob: bytes) -> Samples:
    try:
        body = zlib.decompress(blob)
        version, n, t0 = _HEADER.unpack_from(body)
    except (zlib.error, struct.error):
        raise IntegrityError("not a packed segment") from None
    if version != _VERSION or len(body) != _HEADER.size + (n - 1) * 8 + n * 8 + n:
        raise IntegrityError("packed segment has an unknown layout")
    offset = _HEADER.size
    deltas = np.frombuffer(body, "<i8", n - 1, offset)
    offset += (n - 1) * 8
    values = np.frombuffer(body, "<f8", n, offset)
    offset += n * 8
    flags = np.frombuffer(body, "u1", n, offset)
    t = np.empty(n, dtype=np.int64)
    t[0] = t0
    np.cumsum(deltas, out=t[1:])
    t[1:] += t0
    return Samples(t, values.astype(np.float64), flags.astype(np.uint8))
