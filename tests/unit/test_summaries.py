"""Clinician summaries: statistics over clean samples, and each episode rule on fixed data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from vitals.daily import minute_medians
from vitals.days import ZoneSpan, day_bounds
from vitals.summaries import (
    DAY_MS,
    MINUTE_MS,
    blood_pressure_episodes,
    esh_category,
    summarise,
    summarise_sources,
)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS  # a UTC midnight


def _series(values: list[float], step_ms: int, flags: list[int] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = T0 + np.arange(len(values), dtype=np.int64) * step_ms
    f = np.zeros(len(values), np.uint8) if flags is None else np.asarray(flags, np.uint8)
    return t, np.asarray(values, np.float64), f


def test_statistics_skip_flagged_samples_but_count_them() -> None:
    t, v, f = _series([60, 62, 250, 64, 66], MINUTE_MS, [0, 0, 1, 0, 0])
    s = summarise("heart_rate", t, v, f, T0, T0 + 10 * MINUTE_MS)
    assert (s.count, s.flagged) == (4, 1)
    assert (s.minimum, s.maximum, s.median, s.mean) == (60, 66, 63, 63)
    assert s.latest == 66 and s.latest_ms == T0 + 4 * MINUTE_MS
    assert s.percentiles[95] == pytest.approx(65.7)
    assert s.wear_minutes == 4 and s.completeness == pytest.approx(0.4)
    assert s.episodes == ()


def test_samples_outside_the_period_are_ignored() -> None:
    t, v, f = _series([70, 80, 90], MINUTE_MS)
    s = summarise("heart_rate", t, v, f, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS)
    assert (s.count, s.latest) == (1, 80)


def test_an_empty_period_has_counts_and_no_statistics() -> None:
    t, v, f = _series([], MINUTE_MS)
    s = summarise("spo2", t, v, f, T0, T0 + DAY_MS)
    assert (s.count, s.mean, s.completeness) == (0, None, 0.0)
    with pytest.raises(ValueError, match="empty"):
        summarise("spo2", t, v, f, T0, T0)


def test_trend_is_per_day_and_absent_within_one_day() -> None:
    t, v, f = _series([80.0, 79.5, 79.0, 78.5], DAY_MS)
    s = summarise("body_weight", t, v, f, T0, T0 + 4 * DAY_MS)
    assert s.trend_per_day == pytest.approx(-0.5)
    assert s.completeness == 1.0 and s.wear_minutes is None
    t, v, f = _series([60, 70], 3600_000)
    assert summarise("heart_rate", t, v, f, T0, T0 + DAY_MS).trend_per_day is None


def test_tachycardia_needs_ten_consecutive_minutes() -> None:
    # 1 Hz: 9 minutes at 120, a normal minute, then 10 minutes at 130.
    values = [120.0] * 540 + [70.0] * 60 + [130.0] * 600
    t, v, f = _series(values, 1000)
    s = summarise("heart_rate", t, v, f, T0, T0 + DAY_MS)
    assert [(e.rule, e.start_ms, e.end_ms, e.value) for e in s.episodes] == [
        ("tachycardia_run", T0 + 10 * MINUTE_MS, T0 + 20 * MINUTE_MS, 130.0)]


def test_a_missing_minute_breaks_a_run() -> None:
    t = np.r_[T0 + np.arange(5) * MINUTE_MS, T0 + np.arange(6, 12) * MINUTE_MS]
    v = np.full(len(t), 45.0)
    s = summarise("heart_rate", t, v, np.zeros(len(t), np.uint8), T0, T0 + DAY_MS)
    assert s.episodes == ()
    t = T0 + np.arange(10, dtype=np.int64) * MINUTE_MS
    s = summarise("heart_rate", t, np.full(10, 45.0), np.zeros(10, np.uint8), T0, T0 + DAY_MS)
    assert [e.rule for e in s.episodes] == ["bradycardia_run"]


def test_one_spike_does_not_open_a_run_and_flagged_samples_raise_nothing() -> None:
    values = [70.0] * 600
    values[300] = 200.0
    t, v, f = _series(values, 1000)
    assert summarise("heart_rate", t, v, f, T0, T0 + DAY_MS).episodes == ()
    t, v, f = _series([85.0] * 120, 1000, [1] * 120)
    assert summarise("spo2", t, v, f, T0, T0 + DAY_MS).episodes == ()


def test_spo2_below_92_for_a_minute() -> None:
    t, v, f = _series([97.0] * 60 + [89.0] * 60 + [96.0] * 60, 1000)
    (e,) = summarise("spo2", t, v, f, T0, T0 + DAY_MS).episodes
    assert (e.rule, e.start_ms, e.value) == ("spo2_below_92", T0 + MINUTE_MS, 89.0)


def test_weight_change_of_more_than_2_kg_within_a_week() -> None:
    t, v, f = _series([80.0, 80.5, 81.0, 82.5, 82.0], DAY_MS)
    (e,) = summarise("body_weight", t, v, f, T0, T0 + 10 * DAY_MS).episodes
    assert (e.start_ms, e.end_ms, e.value) == (T0, T0 + 3 * DAY_MS, 2.5)
    # The same gain spread over more than a week is not an episode.
    t, v, f = _series([80.0, 81.0, 82.5], 4 * DAY_MS)
    assert summarise("body_weight", t, v, f, T0, T0 + 20 * DAY_MS).episodes == ()


@pytest.mark.parametrize(("sys", "dia", "category"), [
    (115, 75, "optimal"), (125, 75, "normal"), (119, 82, "normal"),
    (135, 80, "high_normal"), (145, 95, "grade_1_hypertension"),
    (150, 85, "isolated_systolic_hypertension"), (165, 95, "grade_2_hypertension"),
    (130, 105, "grade_2_hypertension"), (185, 100, "grade_3_hypertension"),
    (140, 90, "grade_1_hypertension"),
])
def test_esh_categories(sys: float, dia: float, category: str) -> None:
    assert esh_category(sys, dia) == category


def test_blood_pressure_episodes_pair_by_time() -> None:
    t = T0 + np.arange(3, dtype=np.int64) * DAY_MS
    found = blood_pressure_episodes(t, np.array([118.0, 162.0, 150.0]),
                                    t[:2], np.array([76.0, 101.0]))
    assert [(e.rule, e.start_ms) for e in found] == [
        ("esh_grade_2_hypertension", T0 + DAY_MS)]


def test_two_sources_are_counted_once_by_priority() -> None:
    # Two watches every minute for two hours, 20 s apart: 60 on one, 90 on the other.
    t = T0 + np.arange(120, dtype=np.int64) * MINUTE_MS
    zeros = np.zeros(120, np.uint8)
    flags = zeros.copy()
    flags[:5] = 1  # b's first five minutes are artefacts
    per_source = {"a": (t, np.full(120, 60.0), zeros), "b": (t + 20_000, np.full(120, 90.0),
                                                           flags)}
    s = summarise_sources("heart_rate", per_source, ["a", "b"], T0, T0 + DAY_MS)
    assert (s.count, s.mean, s.wear_minutes, s.flagged) == (120, 60.0, 120, 5)
    s = summarise_sources("heart_rate", per_source, ["b", "a"], T0, T0 + DAY_MS)
    # b has no clean sample in the first 5-minute bucket: a fills it, b counts elsewhere.
    assert s.count == 120 and s.maximum == 90.0 and s.minimum == 60.0
    assert s.mean == pytest.approx((5 * 60 + 115 * 90) / 120)
    # Interleaved, one summary of both would say 240 samples and a mean of 75.
    both = summarise("heart_rate", np.r_[t, t + 20_000], np.r_[np.full(120, 60.0),
                     np.full(120, 90.0)], np.zeros(240, np.uint8), T0, T0 + DAY_MS)
    assert (both.count, both.mean) == (240, 75.0)


def test_wear_time_and_trend_follow_local_days() -> None:
    # Kolkata days start at 18:30 UTC: an hour of heart rate from 18:00 UTC is split.
    kolkata = [ZoneSpan(0, "Asia/Kolkata")]
    t = T0 + 18 * 3_600_000 + np.arange(60, dtype=np.int64) * MINUTE_MS
    s = summarise("heart_rate", t, np.full(60, 70.0), np.zeros(60, np.uint8), T0,
                  T0 + DAY_MS, kolkata)
    day = dt.date(1970, 1, 1) + dt.timedelta(days=T0 // DAY_MS)
    assert s.wear_minutes_by_day == {day: 30, day + dt.timedelta(days=1): 30}
    # Steps: 1000 a day, then 2000, then 3000, over whole Paris days; the period ends in
    # the middle of a fourth day with 100 steps so far, which must not bend the trend.
    paris = [ZoneSpan(0, "Europe/Paris")]
    start = day_bounds(dt.date(2026, 6, 1), "Europe/Paris")[0]
    hours = start + np.arange(75, dtype=np.int64) * 3_600_000
    v = np.r_[np.full(24, 1000 / 24), np.full(24, 2000 / 24), np.full(24, 3000 / 24),
              np.full(3, 100 / 3)]
    s = summarise("steps", hours, v, np.zeros(75, np.uint8), start,
                  start + 75 * 3_600_000, paris)
    assert s.trend_per_day == pytest.approx(1000.0)


def test_minute_medians_match_numpy_median_per_minute() -> None:
    rng = np.random.default_rng(9)
    for _ in range(100):
        n = int(rng.integers(1, 400))
        t = np.sort(rng.integers(0, 10 * MINUTE_MS, n))
        v = rng.integers(0, 5, n).astype(np.float64) - 0.5 * rng.integers(0, 2, n)
        minutes, medians = minute_medians(t, v)
        m = t // MINUTE_MS
        assert minutes.tolist() == np.unique(m).tolist()
        assert medians.tolist() == [float(np.median(v[m == k])) for k in minutes]
