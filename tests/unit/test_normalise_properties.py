"""Properties of batch normalisation (hypothesis): a batch is the sum of its parts, every
sample leaves exactly once with a verdict, and what is accepted respects the rules."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitals.catalogue import METRIC_NAMES, METRICS
from vitals.normalise import Flag, Normalised, Reject, Window, normalise
from vitals.senml import Pack

PROPS = settings(database=None, deadline=None, max_examples=200,
                 suppress_health_check=[HealthCheck.too_slow])
RECEIVED_AT = 1_750_000_000.0
WINDOW = Window()

# Known metrics with their accepted units, plus names and units nobody knows.
UNITS = {name: [m.unit, *m.conversions] for name, m in METRICS.items()}
metric_unit = st.one_of(
    st.sampled_from([(n, u) for n, units in UNITS.items() for u in units]),
    st.tuples(st.sampled_from(["mood", "heart_rate"]), st.sampled_from(["?", "kg/m2"])),
)
times = st.one_of(
    st.floats(RECEIVED_AT - 40 * 86_400, RECEIVED_AT + 3_600),  # around the window's edges
    st.floats(-1e18, 1e18),
)
values = st.one_of(st.floats(-1e4, 1e5), st.floats(-1e300, 1e300))


@st.composite
def packs(draw: st.DrawFn) -> Pack:
    rows = draw(st.lists(st.tuples(metric_unit, times, values), min_size=1, max_size=40))
    return Pack([r[0][0] for r in rows], [r[0][1] for r in rows], [r[1] for r in rows],
                [r[2] for r in rows])


batches = st.lists(packs(), min_size=0, max_size=8)


def columns(norm: Normalised, select: np.ndarray | slice = slice(None)) -> tuple[bytes, ...]:
    # Bytes, so that NaN (the value of an unknown unit) compares equal to itself.
    return tuple(getattr(norm, c)[select].tobytes()
                 for c in ("metric", "t_ms", "value", "flags", "reject"))


@PROPS
@given(batches, st.data())
def test_a_batch_normalises_as_its_packs_do_one_by_one(batch: list[Pack],
                                                       data: st.DataObject) -> None:
    received = [RECEIVED_AT + data.draw(st.floats(-600, 600)) for _ in batch]
    together = normalise(batch, received, WINDOW)
    for i, (pack, at) in enumerate(zip(batch, received, strict=True)):
        alone = normalise([pack], [at], WINDOW)
        assert columns(together, together.pack == i) == columns(alone)


@PROPS
@given(batches)
def test_every_sample_leaves_once_in_order_with_a_verdict(batch: list[Pack]) -> None:
    norm = normalise(batch, [RECEIVED_AT] * len(batch), WINDOW)
    assert len(norm) == sum(len(p) for p in batch)
    assert np.bincount(norm.pack, minlength=len(batch)).tolist() == [len(p) for p in batch]
    assert np.all(np.diff(norm.pack) >= 0)
    assert set(norm.reject.tolist()) <= {int(r) for r in Reject}


@PROPS
@given(batches)
def test_what_is_accepted_is_known_in_the_window_and_possible(batch: list[Pack]) -> None:
    norm = normalise(batch, [RECEIVED_AT] * len(batch), WINDOW)
    ok = norm.reject == Reject.ACCEPTED
    t_s = norm.t_ms[ok] / 1000
    assert np.all(t_s >= RECEIVED_AT - WINDOW.past_s - 0.001)
    assert np.all(t_s <= RECEIVED_AT + WINDOW.future_s + 0.001)
    for metric, value, flags in zip(norm.metric[ok], norm.value[ok], norm.flags[ok],
                                    strict=True):
        known = METRICS[METRIC_NAMES[metric]]
        assert known.possible[0] <= value <= known.possible[1]
        implausible = not known.plausible[0] <= value <= known.plausible[1]
        assert bool(flags & Flag.IMPLAUSIBLE) == implausible
    assert np.all(norm.metric[norm.reject == Reject.UNKNOWN_METRIC] == -1)


@PROPS
@given(st.sampled_from([(n, u) for n, units in UNITS.items() for u in units]),
       st.floats(-1e6, 1e6))
def test_each_unit_converts_by_its_catalogue_factor(pair: tuple[str, str],
                                                    raw: float) -> None:
    name, unit = pair
    norm = normalise([Pack([name], [unit], [RECEIVED_AT - 1], [raw])], [RECEIVED_AT], WINDOW)
    conversion = METRICS[name].conversion_from(unit)
    assert conversion is not None
    assert norm.value[0] == raw * conversion.scale + conversion.offset
    assert METRIC_NAMES[norm.metric[0]] == name
