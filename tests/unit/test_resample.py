"""Buckets agree with a plain per-bucket computation, including empty input."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vitals.resample import bucketise


@given(st.lists(st.tuples(st.integers(0, 10**7), st.floats(-1e3, 1e3)), max_size=60),
       st.sampled_from([1000, 60_000]))
def test_buckets_match_a_direct_computation(points: list[tuple[int, float]], width: int) -> None:
    t = np.array([p[0] for p in points], np.int64)
    v = np.array([p[1] for p in points], np.float64)
    b = bucketise(t, v, width)
    assert int(b.count.sum()) == len(points)
    for i, start in enumerate(b.t_ms):
        inside = v[(t >= start) & (t < start + width)]
        assert b.count[i] == len(inside)
        assert np.isclose(b.mean[i], inside.mean()) and np.isclose(b.std[i], inside.std())
        assert b.minimum[i] == inside.min() and b.maximum[i] == inside.max()
