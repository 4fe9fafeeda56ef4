"""Daily figures per local day, with several sources per metric counted once.

When two devices measure the same metric (two watches, a phone and a watch), the samples of
each time bucket come from one source only: the highest in the patient's priority order that
has data in that bucket. Cumulative metrics (steps) are therefore never summed across
overlapping sources, and never maxed either: the priority source's count is the count.
Where the priority source has a gap, the next source fills it.

Headline figure of a day, per metric kind:
- cumulative (steps): the total;
- heart rate: the resting heart rate, taken as the 10th percentile of the day's per-minute
  medians (the low, sustained rate of rest and sleep; one low beat does not make it), with
  at least 30 minutes of data;
- sleep: minutes asleep in the night that ends that morning (a night runs noon to noon and
  belongs to the day it ends on);
- anything else (skin temperature, weight, glucose...): the mean.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vitals.days import ZoneSpan, day_bounds, day_number, day_pieces, local_days, zone_at

CUMULATIVE = frozenset({"steps"})
NIGHTLY = frozenset({"sleep_duration"})
NIGHT_SHIFT_MS = 12 * 3_600_000
BUCKET_MS = {"steps": 15 * 60_000}  # phones report steps in long intervals
DEFAULT_BUCKET_MS = 5 * 60_000
RESTING_MIN_MINUTES = 30

# Default priority by device model: the device made for the measurement first; a patient
# reorders per metric (their own device ids) when they know better.
DEFAULT_MODEL_PRIORITY: Mapping[str, tuple[str, ...]] = {
    "steps": ("watch", "phone"),
    "heart_rate": ("watch", "pulse_oximeter", "bp_cuff"),
    "spo2": ("pulse_oximeter", "watch"),
    "body_weight": ("scale",),
    "body_fat": ("scale",),
    "systolic_bp": ("bp_cuff", "watch"),
    "diastolic_bp": ("bp_cuff", "watch"),
    "body_temperature": ("thermometer", "watch"),
    "blood_glucose": ("glucometer",),
    "skin_temperature": ("watch",),
}

Series = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class DayFigure:
    day: dt.date
    start_ms: int  # the day's first instant (UTC ms) where the patient was
    hours: float  # the local day's length: 23 or 25 at DST changes, other on a trip
    value: float | None  # the headline figure (see the module's docstring)
    count: int
    minimum: float | None
    maximum: float | None
    total: float | None = None  # of the counted samples
    mean: float | None = None
    std: float | None = None  # population standard deviation
    sources: dict[str, float | None] = field(default_factory=dict)  # each source alone
    counted: dict[str, int] = field(default_factory=dict)  # samples kept per source


def priority_order(sources: Sequence[str], models: Mapping[str, str], metric: str,
                   patient_order: Sequence[str] = ()) -> list[str]:
    """Sources best first: the patient's own order, then by model default, then by id."""
    ranked_models = DEFAULT_MODEL_PRIORITY.get(metric, ())

    def rank(source: str) -> tuple[int, int, str]:
        mine = list(patient_order).index(source) if source in patient_order else len(
            patient_order)
        model = models.get(source, "")
        by_model = ranked_models.index(model) if model in ranked_models else len(ranked_models)
        return mine, by_model, source

    return sorted(sources, key=rank)


def merge_sources(metric: str, per_source: Mapping[str, Series], order: Sequence[str]
                  ) -> tuple[Series, npt.NDArray[np.int64]]:
    """One series from several: per time bucket, only the best source with data there.
    Returns the merged (t, v), time-ordered, and the index in ``order`` of each sample's
    source."""
    bucket = BUCKET_MS.get(metric, DEFAULT_BUCKET_MS)
    ts, vs, rs = [], [], []
    covered = np.zeros(0, np.int64)  # sorted buckets a better source already holds
    for rank, source in enumerate(order):
        if source not in per_source:
            continue
        t, v = per_source[source]
        b = t // bucket
        at = np.minimum(np.searchsorted(covered, b), max(len(covered) - 1, 0))
        free = covered[at] != b if len(covered) else np.ones(len(b), bool)
        ts.append(t[free])
        vs.append(v[free])
        rs.append(np.full(int(free.sum()), rank, np.int64))
        covered = np.union1d(covered, b[free])
    if not ts:
        return (np.zeros(0, np.int64), np.zeros(0)), np.zeros(0, np.int64)
    t, v, r = np.concatenate(ts), np.concatenate(vs), np.concatenate(rs)
    order_t = np.argsort(t, kind="stable")
    return (t[order_t], v[order_t]), r[order_t]


def minute_medians(t: npt.NDArray[np.int64], v: npt.NDArray[np.float64]
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The minutes (since the epoch) with data, and the median of each, in time order."""
    m = t // 60_000
    if len(m) == 0:
        return m, np.zeros(0)
    # Sorted by minute, then value: one integer key from the minute and the value's rank
    # (several times faster than np.lexsort on floats, and exact).
    rank = np.empty(len(v), np.int64)
    rank[np.argsort(v)] = np.arange(len(v))
    by = np.argsort((m - m.min()) * len(v) + rank)
    m, sv = m[by], v[by]
    minutes, first, count = np.unique(m, return_index=True, return_counts=True)
    return minutes, (sv[first + (count - 1) // 2] + sv[first + count // 2]) / 2


def _headline(metric: str, t: npt.NDArray[np.int64], v: npt.NDArray[np.float64]
              ) -> float | None:
    if len(v) == 0:
        return None
    if metric in CUMULATIVE or metric in NIGHTLY:
        return float(v.sum())
    if metric == "heart_rate":
        minutes, medians = minute_medians(t, v)
        if len(minutes) < RESTING_MIN_MINUTES:
            return None
        return float(np.percentile(medians, 10))
    return float(v.mean())


class _ByDay:
    """Indices of a series' samples per local day, in time order: one sort, not a scan of
    every sample for each day."""

    def __init__(self, labels: npt.NDArray[np.int64]) -> None:
        self._index = np.argsort(labels, kind="stable")
        self._sorted = labels[self._index]

    def __getitem__(self, number: int) -> npt.NDArray[np.intp]:
        lo, hi = np.searchsorted(self._sorted, [number, number + 1])
        return self._index[lo:hi]


def daily(metric: str, per_source: Mapping[str, Series], order: Sequence[str],
          history: Sequence[ZoneSpan], days: Sequence[dt.date]) -> list[DayFigure]:
    """The figure of each local day in ``days``, with each source's own figure beside it.
    Samples outside ``days`` are ignored; a caller that wants part of a day only passes
    that part's samples."""
    shift = NIGHT_SHIFT_MS if metric in NIGHTLY else 0
    (t, v), ranks = merge_sources(metric, per_source, order)
    merged = _ByDay(local_days(t, history, shift))
    per_source_days = {s: (per_source[s], _ByDay(local_days(per_source[s][0], history, shift)))
                       for s in order if s in per_source}
    out = []
    for day in days:
        number = day_number(day)
        at = merged[number]
        dv = v[at]
        pieces = day_pieces(history, day, shift)
        sources = {}
        for s, ((st, sv), sdays) in per_source_days.items():
            sat = sdays[number]
            sources[s] = _headline(metric, st[sat], sv[sat])
        counted = {order[i]: int(n) for i, n in
                   zip(*np.unique(ranks[at], return_counts=True), strict=True)}
        some = len(dv) > 0
        out.append(DayFigure(
            day, pieces[0][0] if pieces else day_bounds(day, zone_at(history, 0), shift)[0],
            sum(b - a for a, b in pieces) / 3_600_000, _headline(metric, t[at], dv),
            len(dv), float(dv.min()) if some else None,
            float(dv.max()) if some else None, float(dv.sum()) if some else None,
            float(dv.mean()) if some else None, float(dv.std()) if some else None,
            sources, counted))
    return out
