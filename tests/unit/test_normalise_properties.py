"""Properties of batch normalisation (hypothesis): a batch is the sum of its parts (its
packs, or with sources its sources), every sample leaves exactly once with a verdict, what is
accepted respects the rules, deduplication keeps one sample per (source, metric, time), flags
never change a value, and raw values come back from the stored ones."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitals.catalogue import METRIC_NAMES, METRICS
from vitals.normalise import (
    ARTEFACT_RULES,
    CLOCK_AHEAD_FLAG_S,
    Flag,
    Normalised,
    Reject,
    Window,
    _pair_index,
    normalise,
    raw_values,
)
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


# Dense 1 Hz streams of one device: what deduplication and the artefact rules work on.
stream_metric = st.sampled_from([("heart_rate", "/min"), ("spo2", "%"), ("spo2", "/"),
                                 ("body_weight", "[lb_av]")])


@st.composite
def streams(draw: st.DrawFn) -> Pack:
    rows = draw(st.lists(st.tuples(stream_metric, st.integers(0, 30),
                                   st.sampled_from([0.9, 40.0, 70.0, 88.0, 97.0, 140.0])),
                         min_size=1, max_size=40))
    return Pack([r[0][0] for r in rows], [r[0][1] for r in rows],
                [RECEIVED_AT - 100 + r[1] for r in rows], [r[2] for r in rows])


stream_batches = st.lists(st.tuples(streams(), st.sampled_from("abc")), max_size=8)


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


@PROPS
@given(stream_batches)
def test_with_sources_a_batch_normalises_as_its_sources_do_one_by_one(
        batch: list[tuple[Pack, str]]) -> None:
    packs, sources = [p for p, _ in batch], [s for _, s in batch]
    together = normalise(packs, [RECEIVED_AT] * len(packs), WINDOW, sources)
    for source in set(sources):
        mine = [i for i, s in enumerate(sources) if s == source]
        alone = normalise([packs[i] for i in mine], [RECEIVED_AT] * len(mine), WINDOW,
                          [source] * len(mine))
        assert columns(together, np.isin(together.pack, mine)) == columns(alone)


@PROPS
@given(st.one_of(stream_batches, st.lists(st.tuples(packs(), st.sampled_from("ab")),
                                          max_size=6)))
def test_deduplication_keeps_exactly_one_sample_per_source_metric_and_time(
        batch: list[tuple[Pack, str]]) -> None:
    packs_, sources = [p for p, _ in batch], [s for _, s in batch]
    norm = normalise(packs_, [RECEIVED_AT] * len(packs_), WINDOW, sources)
    source = np.array([sources[p] for p in norm.pack.tolist()], dtype=object)
    kept: dict[tuple[object, int, int], int] = {}
    for i in range(len(norm)):  # input order: the first accepted copy is the one kept
        key = (source[i], int(norm.metric[i]), int(norm.t_ms[i]))
        reject = norm.reject[i]
        if reject == Reject.ACCEPTED:
            assert key not in kept
            kept[key] = i
        elif reject in (Reject.DUPLICATE, Reject.CONFLICT):
            first = kept[key]  # an earlier accepted copy exists
            same = norm.value[first] == norm.value[i]
            assert reject == (Reject.DUPLICATE if same else Reject.CONFLICT)
            if not same:
                assert norm.flags[first] & Flag.CONFLICT
    conflicted = {kept[(source[i], int(norm.metric[i]), int(norm.t_ms[i]))]
                  for i in np.flatnonzero(norm.reject == Reject.CONFLICT).tolist()}
    assert set(np.flatnonzero(norm.flags & Flag.CONFLICT).tolist()) == conflicted


@PROPS
@given(st.one_of(stream_batches, st.lists(st.tuples(packs(), st.sampled_from("ab")),
                                          max_size=6)))
def test_flags_and_deduplication_never_change_a_value_or_a_time(
        batch: list[tuple[Pack, str]]) -> None:
    packs_, sources = [p for p, _ in batch], [s for _, s in batch]
    norm = normalise(packs_, [RECEIVED_AT] * len(packs_), WINDOW, sources)
    rows = [(m, u, t, v) for p in packs_
            for m, u, t, v in zip(p.metrics, p.units, p.times, p.values, strict=True)]
    for i, (m, u, t, v) in enumerate(rows):
        alone = normalise([Pack([m], [u], [t], [v])], [RECEIVED_AT], WINDOW)
        assert alone.value.tobytes() == norm.value[i:i + 1].tobytes()
        assert alone.t_ms[0] == norm.t_ms[i]
        # Flags only ever add to those a sample has on its own (implausible, clock ahead).
        assert alone.flags[0] & ~norm.flags[i] == 0 or alone.reject[0] != norm.reject[i]


@PROPS
@given(stream_batches)
def test_artefact_flags_fall_only_on_accepted_samples_of_their_metric_with_close_neighbours(
        batch: list[tuple[Pack, str]]) -> None:
    packs_, sources = [p for p, _ in batch], [s for _, s in batch]
    norm = normalise(packs_, [RECEIVED_AT] * len(packs_), WINDOW, sources)
    source = np.array([sources[p] for p in norm.pack.tolist()], dtype=object)
    ok = norm.reject == Reject.ACCEPTED
    for rule in ARTEFACT_RULES:
        hit = np.flatnonzero(norm.flags & rule.flag)
        assert np.all(ok[hit])
        assert all(METRIC_NAMES[norm.metric[i]] == rule.metric for i in hit)
        for i in hit.tolist():
            same = ok & (source == source[i]) & (norm.metric == norm.metric[i])
            t = norm.t_ms[same]
            assert np.any(t < norm.t_ms[i]) and np.any(t > norm.t_ms[i])  # judged inside


@PROPS
@given(batches, st.data())
def test_clock_offset_is_the_newest_accepted_time_and_flags_packs_ahead(
        batch: list[Pack], data: st.DataObject) -> None:
    received = [RECEIVED_AT + data.draw(st.floats(-600, 600)) for _ in batch]
    norm = normalise(batch, received, WINDOW)
    for i, (pack, at) in enumerate(zip(batch, received, strict=True)):
        mine = (norm.pack == i) & (norm.reject == Reject.ACCEPTED)
        accepted_times = np.asarray(pack.times)[mine[norm.pack == i]]
        if len(accepted_times) == 0:
            assert np.isnan(norm.clock_offset_s[i])
            continue
        offset = accepted_times.max() - at
        assert norm.clock_offset_s[i] == offset
        ahead = norm.flags[mine] & Flag.CLOCK_AHEAD != 0
        assert np.all(ahead == (offset > CLOCK_AHEAD_FLAG_S))


# Device readings: a few significant digits, inside the metric's possible range.
@st.composite
def readings(draw: st.DrawFn) -> tuple[str, str, list[float]]:
    name, unit = draw(st.sampled_from([(n, u) for n, units in UNITS.items() for u in units]))
    conversion = METRICS[name].conversion_from(unit)
    assert conversion is not None
    low, high = sorted((x - conversion.offset) / conversion.scale
                       for x in METRICS[name].possible)
    digits = draw(st.integers(1, 7))
    values = draw(st.lists(st.floats(low, high), min_size=1, max_size=20))
    # Readings have a resolution: nothing finer than a nanounit (subnormal floats lose the
    # digits a conversion needs).
    return name, unit, [float(f"{v:.{digits}g}") if abs(v) >= 1e-9 else 0.0 for v in values]


@PROPS
@given(readings())
def test_raw_values_give_back_the_device_readings_exactly(
        reading: tuple[str, str, list[float]]) -> None:
    name, unit, raw = reading
    norm = normalise([Pack([name] * len(raw), [unit] * len(raw),
                           [RECEIVED_AT - 1 - i for i in range(len(raw))], raw)],
                     [RECEIVED_AT], WINDOW)
    stored = norm.value  # some may be rejected at the range's rounded edges: all invert
    assert raw_values(name, unit, stored).tolist() == raw
    converted = unit != METRICS[name].unit
    accepted = bool(np.any(norm.reject == Reject.ACCEPTED))
    assert norm.raw_units == ({0: {name: [unit]}} if converted and accepted else {})


@st.composite
def one_pair_packs(draw: st.DrawFn) -> Pack:
    """The usual pack: one metric in one unit throughout (looked up once per pack)."""
    (name, unit), n = draw(metric_unit), draw(st.integers(0, 40))
    return Pack([name] * n, [unit] * n, [RECEIVED_AT] * n, [1.0] * n)


@PROPS
@given(st.lists(st.one_of(packs(), one_pair_packs()), max_size=8))
def test_pairs_are_numbered_per_sample_in_order_of_first_appearance(batch: list[Pack]) -> None:
    pairs = [pair for p in batch for pair in zip(p.metrics, p.units, strict=True)]
    want = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
    sizes = np.array([len(p) for p in batch], dtype=np.int64)
    index, distinct = _pair_index(batch, sizes)
    assert distinct == want
    assert index.tolist() == [want[pair] for pair in pairs]
