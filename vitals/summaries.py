"""What a clinician reads in seconds: per-metric statistics and flagged episodes.

Pure numpy over one metric's samples in a period. Samples carrying a quality flag count in
``flagged`` but not in the statistics or the episode rules: an artefact must not raise an
alarm, nor hide one by moving the median.

Two devices measuring the same metric (two watches, a cuff and a watch) are merged first
(:func:`summarise_sources`, with the same per-metric source priority as the daily figures):
their samples interleaved would count steps twice, double the wear time and let one
device's gaps hide in the other's data. Parts that speak of days (the trend, wear time per
day) use the patient's local days.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vitals.daily import CUMULATIVE, merge_sources, minute_medians
from vitals.days import ZoneSpan, day_of, day_pieces, local_days
from vitals.normalise import reliable

MINUTE_MS = 60_000
DAY_MS = 86_400_000
PERCENTILES = (5, 25, 75, 95)

# Metrics a worn device streams; their completeness is counted in minutes, and the minutes
# with data are the wear time. Spot metrics (a weighing, a cuff reading) count in days.
CONTINUOUS = frozenset({"heart_rate", "spo2", "rr_interval", "steps", "skin_temperature"})

SourceSamples = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.uint8]]


@dataclass(frozen=True, slots=True)
class Episode:
    rule: str  # the rule's identifier, e.g. "tachycardia_run"
    description: str  # the rule in words, so the reader knows why it fired
    start_ms: int
    end_ms: int
    value: float  # the run's extreme (or the reading itself for spot rules)


@dataclass(frozen=True, slots=True)
class Summary:
    metric: str
    count: int
    flagged: int
    latest_ms: int | None = None
    latest: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    median: float | None = None
    percentiles: dict[int, float] = field(default_factory=dict)
    trend_per_day: float | None = None  # slope of the local days' figures, unit per day
    completeness: float = 0.0  # fraction of the period's minutes (or days) with data
    wear_minutes: int | None = None  # continuous metrics only
    wear_minutes_by_day: dict[dt.date, int] = field(default_factory=dict)  # local days
    episodes: tuple[Episode, ...] = ()


def summarise_sources(metric: str, per_source: Mapping[str, SourceSamples],
                      order: Sequence[str], start_ms: int, end_ms: int,
                      history: Sequence[ZoneSpan] = ()) -> Summary:
    """:func:`summarise` over several sources of one metric, counted once: per time bucket
    only the best source in ``order`` with clean data there (see vitals/daily.py). Flagged
    samples of every source count in ``flagged``: each waits for review."""
    clean = {}
    flagged = 0
    for source, (t, v, f) in per_source.items():
        inside = (t >= start_ms) & (t < end_ms)
        flagged += int(np.count_nonzero(inside & ~reliable(f)))
        keep = inside & reliable(f)
        clean[source] = (t[keep], v[keep])
    ranked = [*order, *sorted(set(per_source) - set(order))]
    (t, v), _ = merge_sources(metric, clean, ranked)
    merged = summarise(metric, t, v, np.zeros(len(t), np.uint8), start_ms, end_ms, history)
    return dataclasses.replace(merged, flagged=flagged)


def summarise(metric: str, t_ms: npt.NDArray[np.int64], value: npt.NDArray[np.float64],
              flags: npt.NDArray[np.uint8], start_ms: int, end_ms: int,
              history: Sequence[ZoneSpan] = ()) -> Summary:
    """The summary of one metric's samples in [start_ms, end_ms), sorted by time, for a
    patient whose zones are ``history`` (none: the default zone). One source, or sources
    already merged: samples of two devices are not told apart here."""
    if end_ms <= start_ms:
        raise ValueError("the period must not be empty")
    inside = (t_ms >= start_ms) & (t_ms < end_ms)
    good = inside & reliable(flags)
    t, v = t_ms[good], value[good]
    flagged = int(np.count_nonzero(inside & ~reliable(flags)))
    if len(t) == 0:
        return Summary(metric, 0, flagged)
    continuous = metric in CONTINUOUS
    minutes = np.unique(t // MINUTE_MS)
    by_day: dict[dt.date, int] = {}
    if continuous:
        completeness = len(minutes) / -(-(end_ms - start_ms) // MINUTE_MS)
        wear: int | None = len(minutes)
        numbers, counts = np.unique(local_days(minutes * MINUTE_MS, history),
                                    return_counts=True)
        by_day = {day_of(int(n)): int(c) for n, c in zip(numbers, counts, strict=True)}
    else:
        # 24-hour windows from the period's start, not calendar days: "a reading in each of
        # the last 7 days" stays 7 of 7 when the period starts mid-morning.
        days = np.unique((t - start_ms) // DAY_MS)
        completeness = len(days) / -(-(end_ms - start_ms) // DAY_MS)
        wear = None
    pct = np.percentile(v, PERCENTILES)
    return Summary(
        metric, len(t), flagged, int(t[-1]), float(v[-1]), float(v.min()), float(v.max()),
        float(v.mean()), float(np.median(v)),
        {p: float(x) for p, x in zip(PERCENTILES, pct, strict=True)},
        _trend_per_day(metric, t, v, start_ms, end_ms, history), completeness, wear, by_day,
        tuple(episodes(metric, t, v)))


def _trend_per_day(metric: str, t: npt.NDArray[np.int64], v: npt.NDArray[np.float64],
                   start_ms: int, end_ms: int, history: Sequence[ZoneSpan]) -> float | None:
    """Least-squares slope of one figure per local day against the day: the mean, or for
    cumulative metrics the total of each day lying whole in the period (a half day's steps
    is not a fall). None with fewer than two such days, or samples spanning less than a
    day: a trend inside one day is the circadian rhythm, not a trend."""
    if len(t) < 2 or t[-1] - t[0] < DAY_MS:
        return None
    numbers, inverse = np.unique(local_days(t, history), return_inverse=True)
    figures: npt.NDArray[np.float64]
    if metric in CUMULATIVE:
        figures = np.bincount(inverse, weights=v, minlength=len(numbers)).astype(np.float64)
        whole = np.array([all(start_ms <= a and b <= end_ms
                              for a, b in day_pieces(history, day_of(int(n))))
                          for n in numbers], dtype=bool)
        numbers, figures = numbers[whole], figures[whole]
    else:
        figures = (np.bincount(inverse, weights=v, minlength=len(numbers)).astype(np.float64)
                   / np.bincount(inverse, minlength=len(numbers)).astype(np.float64))
    if len(numbers) < 2:
        return None
    return float(np.polyfit(numbers.astype(np.float64), figures, 1)[0])


def episodes(metric: str, t: npt.NDArray[np.int64],
             v: npt.NDArray[np.float64]) -> list[Episode]:
    """The episodes the rules for ``metric`` find in clean, time-ordered samples."""
    if metric == "heart_rate":
        return (_minute_runs(t, v, lambda m: m > 100, "tachycardia_run",
                             "heart rate above 100/min for 10 minutes or more", 10, high=True)
                + _minute_runs(t, v, lambda m: m < 50, "bradycardia_run",
                               "heart rate below 50/min for 10 minutes or more", 10, high=False))
    if metric == "spo2":
        return _minute_runs(t, v, lambda m: m < 92, "spo2_below_92",
                            "oxygen saturation below 92 % for a minute or more", 1, high=False)
    if metric == "body_weight":
        return weight_changes(t, v)
    return []


def _minute_runs(t: npt.NDArray[np.int64], v: npt.NDArray[np.float64],
                 meets: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]],
                 rule: str, description: str, min_minutes: int, *, high: bool) -> list[Episode]:
    """Runs of consecutive minutes whose median ``meets`` the rule, ``min_minutes`` or longer.

    Minute medians, not single samples: one noisy beat neither opens nor breaks a run."""
    if len(t) == 0:
        return []
    minutes, medians = minute_medians(t, v)
    ok = meets(medians)
    # A run breaks where the rule fails or a minute is missing (no data is no evidence).
    breaks = ~ok | np.r_[True, np.diff(minutes) != 1]
    run_id = np.cumsum(breaks)
    found = []
    for run in np.unique(run_id[ok]):
        members = np.flatnonzero((run_id == run) & ok)
        if len(members) < min_minutes:
            continue
        chunk = medians[members]
        found.append(Episode(rule, description, int(minutes[members[0]] * MINUTE_MS),
                             int((minutes[members[-1]] + 1) * MINUTE_MS),
                             float(chunk.max() if high else chunk.min())))
    return found


WEIGHT_CHANGE_KG = 2.0
WEEK_MS = 7 * DAY_MS


def weight_changes(t: npt.NDArray[np.int64], v: npt.NDArray[np.float64]) -> list[Episode]:
    """Weighings more than 2 kg away from any weighing of the 7 days before them (fluid
    retention in heart failure shows this way)."""
    found = []
    lo = 0
    for i in range(len(t)):
        while t[lo] < t[i] - WEEK_MS:
            lo += 1
        earlier = v[lo:i]
        if len(earlier) == 0:
            continue
        delta = v[i] - earlier
        j = int(np.argmax(np.abs(delta)))
        if abs(delta[j]) > WEIGHT_CHANGE_KG:
            found.append(Episode("weight_change_2kg_week",
                                 "weight changed by more than 2 kg within 7 days",
                                 int(t[lo + j]), int(t[i]), float(delta[j])))
    return found


# ESH 2023 office blood-pressure categories; a reading takes the higher of its two grades.
_ESH_GRADES = (  # (name, systolic from, diastolic from)
    ("grade_3_hypertension", 180.0, 110.0),
    ("grade_2_hypertension", 160.0, 100.0),
    ("grade_1_hypertension", 140.0, 90.0),
    ("high_normal", 130.0, 85.0),
    ("normal", 120.0, 80.0),
)


def esh_category(systolic: float, diastolic: float) -> str:
    """The ESH category of one reading: optimal, normal, high_normal, or a hypertension
    grade; isolated systolic hypertension when systolic >= 140 and diastolic < 90."""
    if systolic >= 140 and diastolic < 90:
        return "isolated_systolic_hypertension"
    for name, sys_from, dia_from in _ESH_GRADES:
        if systolic >= sys_from or diastolic >= dia_from:
            return name
    return "optimal"


def blood_pressure_episodes(t_sys: npt.NDArray[np.int64], systolic: npt.NDArray[np.float64],
                            t_dia: npt.NDArray[np.int64],
                            diastolic: npt.NDArray[np.float64]) -> list[Episode]:
    """Readings in a hypertensive ESH category; systolic and diastolic pair by time stamp
    (a cuff sends both of one measurement with the same time)."""
    common, i_sys, i_dia = np.intersect1d(t_sys, t_dia, return_indices=True)
    found = []
    for k, at in enumerate(common):
        s, d = float(systolic[i_sys[k]]), float(diastolic[i_dia[k]])
        category = esh_category(s, d)
        if "hypertension" in category:
            found.append(Episode(f"esh_{category}",
                                 f"blood pressure {s:.0f}/{d:.0f} mm[Hg]: ESH {category}",
                                 int(at), int(at), s))
    return found
