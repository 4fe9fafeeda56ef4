"""Packed segments: exact round trip, real compression, corruption detected."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from storage.errors import IntegrityError
from storage.segments import LEVEL_COMPACT, LEVEL_INGEST, Samples, pack, pack_many, unpack

FUZZ = settings(database=None, deadline=None, max_examples=200)
RAW_BYTES_PER_SAMPLE = 8 + 8 + 1  # i64 time, f64 value, u8 flags


def heart_rate_hour(start_ms: int = 1_750_000_000_000) -> Samples:
    """An hour of 1 Hz heart rate as a watch reports it: a slow drift, noise, 0.1 bpm."""
    rng = np.random.default_rng(20240611)
    n = 3600
    seconds = np.arange(n)
    drift = 72 + 8 * np.sin(seconds / 900) + np.cumsum(rng.normal(0, 0.2, n))
    value = np.round(np.clip(drift, 40, 180), 1)
    t_ms = start_ms + seconds.astype(np.int64) * 1000
    return Samples(t_ms, value, np.zeros(n, dtype=np.uint8))


def assert_same(got: Samples, want: Samples) -> None:
    assert got.t_ms.dtype == np.int64 and got.value.dtype == np.float64
    assert got.flags.dtype == np.uint8
    assert got.t_ms.tolist() == want.t_ms.tolist()
    assert got.value.tobytes() == want.value.tobytes()  # bit for bit, NaN and -0.0 included
    assert got.flags.tolist() == want.flags.tolist()


@st.composite
def samples(draw: st.DrawFn) -> Samples:
    n = draw(st.integers(1, 300))
    return Samples(
        draw(hnp.arrays(np.int64, n, elements=st.integers(-(2**62), 2**62))),
        draw(hnp.arrays(np.float64, n, elements=st.floats(width=64))),
        draw(hnp.arrays(np.uint8, n)),
    )


@FUZZ
@given(samples())
def test_unpack_of_pack_gives_back_the_samples(original: Samples) -> None:
    assert_same(unpack(pack(original)), original)


@FUZZ
@given(st.integers(1_000_000_000_000, 2_000_000_000_000),
       st.lists(st.integers(0, 600_000), min_size=0, max_size=200),
       st.floats(allow_nan=False, allow_infinity=False))
def test_round_trip_of_increasing_times_keeps_every_timestamp(
        start: int, gaps: list[int], value: float) -> None:
    t_ms = np.asarray([start, *(start + np.cumsum(gaps, dtype=np.int64))], dtype=np.int64)
    original = Samples(t_ms, np.full(len(t_ms), value), np.ones(len(t_ms), dtype=np.uint8))
    assert_same(unpack(pack(original)), original)


def test_single_sample_round_trips() -> None:
    one = Samples(np.array([1_750_000_000_123], dtype=np.int64), np.array([36.6]),
                  np.array([1], dtype=np.uint8))
    assert_same(unpack(pack(one)), one)


def test_unpack_accepts_other_input_dtypes_by_converting_them() -> None:
    mixed = Samples(np.array([1, 2, 3], dtype=np.int32).astype(np.int64),
                    np.array([1.5, 2.5, 3.5], dtype=np.float32).astype(np.float64),
                    np.array([0, 1, 0], dtype=np.uint8))
    assert_same(unpack(pack(mixed)), mixed)


def test_empty_segment_is_refused() -> None:
    empty = Samples(np.array([], dtype=np.int64), np.array([]), np.array([], dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        pack(empty)


def test_regular_heart_rate_compresses_far_below_the_raw_size() -> None:
    hour = heart_rate_hour()
    blob = pack(hour)
    assert len(blob) / len(hour) < 6  # against 17 bytes per sample unpacked
    assert len(blob) < RAW_BYTES_PER_SAMPLE * len(hour) / 3
    assert_same(unpack(blob), hour)


def version_1_blob(samples: Samples) -> bytes:
    """The first layout, as segments sealed before version 2 hold it: float64 values."""
    t = samples.t_ms.astype("<i8")
    return zlib.compress(bytes([1]) + len(t).to_bytes(4, "little") + t[:1].tobytes()
                         + np.diff(t).astype("<i8").tobytes()
                         + samples.value.astype("<f8").tobytes() + samples.flags.tobytes())


def test_segments_written_in_the_first_layout_still_unpack() -> None:
    hour = heart_rate_hour()
    assert_same(unpack(version_1_blob(hour)), hour)


def test_values_on_a_decimal_grid_pack_smaller_than_as_floats() -> None:
    hour = heart_rate_hour()
    assert len(pack(hour)) < 0.75 * len(version_1_blob(hour))  # measured: 0.59
    assert_same(unpack(pack(hour)), hour)


@pytest.mark.parametrize("values", [
    [-0.0, 1.0, 2.0],        # a negative zero must keep its sign
    [0.1, 0.2, 1 / 3],       # not on a grid of three decimals
    [1e13, 2.0, 3.0],        # too large to scale safely
    [0.001, -0.002, 5.125],  # three decimals, negative deltas
])
def test_values_that_are_awkward_for_the_grid_round_trip_bit_for_bit(values: list[float]) -> None:
    n = len(values)
    original = Samples(np.arange(n, dtype=np.int64) * 1000, np.asarray(values),
                       np.zeros(n, dtype=np.uint8))
    assert_same(unpack(pack(original)), original)


@st.composite
def decimal_grid(draw: st.DrawFn) -> Samples:
    """Values as devices report them: integers k scaled to d decimals (d in 0..3), of both
    signs, up to 1e12, written either as k / 10**d (the nearest float to the decimal) or as
    k * 10.0**-d (often one ulp off it, so off the grid)."""
    d = draw(st.integers(0, 3))
    bound = 10**12 * 10**d
    ks = draw(st.lists(st.integers(-bound, bound), min_size=1, max_size=200))
    if draw(st.booleans()):
        values = np.array(ks, np.float64) / 10**d
    else:
        values = np.array(ks, np.float64) * 10.0**-d
    n = len(values)
    return Samples(1_750_000_000_000 + np.arange(n, dtype=np.int64) * 1000, values,
                   draw(hnp.arrays(np.uint8, n)))


@FUZZ
@given(decimal_grid())
def test_values_on_a_decimal_grid_round_trip_bit_for_bit(original: Samples) -> None:
    assert_same(unpack(pack(original)), original)


# --- corruption --------------------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 1, 2, 0.25, 0.5, 0.75, -4, -1])
def test_flipped_byte_is_detected(where: float) -> None:
    blob = bytearray(pack(heart_rate_hour()))
    index = int(where * len(blob)) if isinstance(where, float) else where
    blob[index] ^= 0xFF
    with pytest.raises(IntegrityError):
        unpack(bytes(blob))


@pytest.mark.parametrize("keep", [0, 1, 10, 0.5, -1])
def test_truncated_blob_is_detected(keep: float) -> None:
    blob = pack(heart_rate_hour())
    end = int(keep * len(blob)) if isinstance(keep, float) else keep
    with pytest.raises(IntegrityError):
        unpack(blob[:end])


@pytest.mark.parametrize("blob", [
    b"",
    b"not zlib at all",
    zlib.compress(b""),
    zlib.compress(b"hello"),  # valid zlib, too short for a header
    zlib.compress(bytes([1]) + (3).to_bytes(4, "little") + bytes(8)),  # 3 samples, no body
    zlib.compress(bytes([3]) + (1).to_bytes(4, "little") + bytes(8 + 8 + 1)),  # version 3
    zlib.compress(bytes([2]) + (1).to_bytes(4, "little") + bytes(8) + bytes([4]) + bytes(9)),
    zlib.compress(bytes([2]) + (1).to_bytes(4, "little") + bytes(8) + bytes([0xFE]) + bytes(9)),
    zlib.compress(bytes([1]) + (0).to_bytes(4, "little") + bytes(8)),  # zero samples
])
def test_blob_that_is_not_a_packed_segment_is_refused(blob: bytes) -> None:
    with pytest.raises(IntegrityError):
        unpack(blob)


def test_extra_bytes_after_the_samples_are_refused() -> None:
    body = zlib.decompress(pack(heart_rate_hour()))
    with pytest.raises(IntegrityError):
        unpack(zlib.compress(body + b"\x00"))


@settings(database=None, deadline=None, max_examples=300)
@given(st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(zlib.compress),
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.binary(max_size=800)).map(
        lambda h: zlib.compress(bytes([h[0]]) + h[1].to_bytes(4, "little") + h[2])),
))
def test_unpack_of_arbitrary_bytes_gives_samples_or_integrity_error(blob: bytes) -> None:
    try:
        got = unpack(blob)
    except IntegrityError:
        return
    assert len(got.t_ms) == len(got.value) == len(got.flags) > 0


def layout_v2(s: Samples, level: int) -> bytes:
    """The version 2 layout written out one segment at a time, as ``pack`` did before it
    packed a batch at once: the oracle that stored bytes did not change."""
    v = s.value
    decimals = -1
    if np.all(np.isfinite(v)) and np.abs(v).max() <= 1e12 and not np.any(
            np.signbit(v) & (v == 0)):
        decimals = next((d for d in range(4)
                         if np.array_equal(np.round(v * 10**d) / 10**d, v)), -1)
    if decimals < 0:
        values = v.astype("<f8").tobytes()
    else:
        scaled = np.round(v * 10**decimals).astype(np.int64)
        values = np.diff(scaled, prepend=np.int64(0)).astype("<i8").tobytes()
    body = (struct.pack("<BIqb", 2, len(s), int(s.t_ms[0]), decimals)
            + np.diff(s.t_ms).astype("<i8").tobytes() + values
            + s.flags.astype("u1").tobytes())
    return zlib.compress(body, level)


@st.composite
def on_a_grid(draw: st.DrawFn) -> Samples:
    """Readings as devices send them: integers or a few decimals, -0.0 now and then."""
    n = draw(st.integers(1, 120))
    decimals = draw(st.integers(0, 4))
    ints = draw(hnp.arrays(np.int64, n, elements=st.integers(-(10**13), 10**13)))
    values = ints / 10**decimals
    values[draw(hnp.arrays(np.bool_, n))] = -0.0
    return Samples(np.sort(draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2**45)))),
                   values, draw(hnp.arrays(np.uint8, n)))


@FUZZ
@given(st.lists(st.one_of(samples(), on_a_grid()), min_size=1, max_size=6),
       st.sampled_from([LEVEL_INGEST, LEVEL_COMPACT]))
def test_a_batch_packs_to_the_bytes_of_each_segment_alone(batch: list[Samples],
                                                          level: int) -> None:
    assert pack_many(batch, level) == [layout_v2(s, level) for s in batch]
    assert [unpack(blob).t_ms.tolist() for blob in pack_many(batch)] == [
        s.t_ms.tolist() for s in batch]


def test_a_batch_refuses_an_empty_segment() -> None:
    empty = Samples(np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint8))
    with pytest.raises(ValueError, match="empty"):
        pack_many([heart_rate_hour(), empty])
