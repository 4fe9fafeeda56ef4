"""A batch's segment rows, computed a batch at a time, are the ones computed a row at a time.
A read rebuilds each row's AAD with ``_segment_aad`` from what the database returns: one
byte of difference and the row never opens again."""

from __future__ import annotations

import uuid

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from storage.segments import Samples
from storage.store import (
    SegmentIn,
    _isoformat_many,
    _segment_aad,
    _segment_aads,
    _utc,
    _uuid4_texts,
    _within_a_day_each,
    within_a_day,
)

# Every millisecond a datetime can hold, and the few that devices send.
_MS = st.one_of(st.integers(-62_135_596_800_000, 253_402_300_799_999),
                st.integers(1_600_000_000_000, 1_900_000_000_000).map(lambda m: m - m % 1000))


@given(st.lists(_MS, min_size=1, max_size=20))
def test_timestamps_are_written_as_isoformat_writes_them(ms: list[int]) -> None:
    assert _isoformat_many(np.array(ms, dtype=np.int64)) == [_utc(m).isoformat() for m in ms]


@given(st.lists(st.tuples(_MS, st.integers(0, 86_399_999), st.integers(1, 100_000),
                          st.sampled_from(["heart_rate", "body_mass", "spo2"]),
                          st.text(min_size=1, max_size=30)), min_size=1, max_size=10),
       st.integers(1, 2**31 - 1))
def test_a_batch_of_aads_is_each_rows_own(rows: list[tuple[int, int, int, str, str]],
                                          version: int) -> None:
    patient = uuid.uuid4()
    ids = _uuid4_texts(len(rows))
    lows = [low for low, _, _, _, _ in rows]
    highs = [min(low + span, 253_402_300_799_999) for low, span, _, _, _ in rows]
    counts = [n for _, _, n, _, _ in rows]
    metrics = [metric for _, _, _, metric, _ in rows]
    devices = [device for _, _, _, _, device in rows]
    batch = _segment_aads(ids, patient, metrics, devices, np.array(lows, dtype=np.int64),
                          np.array(highs, dtype=np.int64), counts, version)
    # As a read rebuilds it: the id as the database gives it back, a UUID.
    assert batch == [_segment_aad(uuid.UUID(i), patient, m, d, _utc(lo), _utc(hi), n, version)
                     for i, m, d, lo, hi, n in zip(ids, metrics, devices, lows, highs, counts,
                                                   strict=True)]


def test_segment_ids_are_random_version_4_uuids_in_canonical_text() -> None:
    ids = _uuid4_texts(2_000)
    assert len(set(ids)) == 2_000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every bit outside the version and variant varies across the draw.
    ints = np.array([[int(c, 16) for c in text.replace("-", "")] for text in ids])
    assert (ints.std(axis=0) > 0).sum() == 32 - 1  # the version digit is fixed


@given(st.lists(st.lists(st.integers(0, 5 * 86_400_000), min_size=1, max_size=30),
                min_size=1, max_size=8))
def test_a_batch_is_cut_at_midnights_as_each_segment_alone(times: list[list[int]]) -> None:
    patient = uuid.uuid4()
    pieces = [(f"w-{i}", SegmentIn(patient, "heart_rate", Samples(
        np.array(t, dtype=np.int64), np.zeros(len(t)), np.zeros(len(t), dtype=np.uint8))))
        for i, t in enumerate(times)]
    expected = [(device, piece) for device, segment in pieces
                for piece in within_a_day(segment)]
    got = _within_a_day_each(pieces)
    assert [(d, p.samples.t_ms.tolist()) for d, p in got] == [
        (d, p.samples.t_ms.tolist()) for d, p in expected]
