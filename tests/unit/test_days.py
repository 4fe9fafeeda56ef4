"""Local days and several sources, with fixed data: DST days, a flight, a half-hour zone,
and two devices counting the same steps."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from vitals.daily import daily, merge_sources, priority_order
from vitals.days import (
    ZoneSpan,
    day_bounds,
    day_hours,
    day_pieces,
    days_touched,
    local_days,
    validate_zone,
)

H = 3_600_000
PARIS = [ZoneSpan(0, "Europe/Paris")]


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp() * 1000)


def hourly(start_ms: int, hours: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    t = start_ms + np.arange(hours, dtype=np.int64) * H
    return t, np.full(hours, value)


@pytest.mark.parametrize(("day", "hours"), [
    (dt.date(2026, 3, 29), 23.0),  # clocks go forward
    (dt.date(2026, 10, 25), 25.0),  # clocks go back
    (dt.date(2026, 6, 1), 24.0),
])
def test_a_paris_day_has_its_true_length_and_total(day: dt.date, hours: float) -> None:
    start, end = day_bounds(day, "Europe/Paris")
    assert (end - start) / H == hours
    # 100 steps every hour from two days before to two days after: the day holds its hours.
    t, v = hourly(start - 48 * H, 24 * 5, 100.0)
    (fig,) = daily("steps", {"watch": (t, v)}, ["watch"], PARIS, [day])
    assert fig.hours == hours and fig.value == 100 * hours


def test_a_patient_flying_to_montreal_keeps_past_days() -> None:
    t, v = hourly(utc_ms(2026, 6, 1), 24 * 20, 50.0)
    days = [dt.date(2026, 6, d) for d in range(2, 11)]
    before = daily("steps", {"w": (t, v)}, ["w"], PARIS, days)
    moved = [*PARIS, ZoneSpan(utc_ms(2026, 6, 11, 10), "America/Montreal")]
    after = daily("steps", {"w": (t, v)}, ["w"], moved, days)
    assert [f.value for f in after] == [f.value for f in before] == [1200.0] * len(days)
    # After the move, days are Montreal days: 2026-06-12 starts at 04:00 UTC.
    assert day_bounds(dt.date(2026, 6, 12), "America/Montreal")[0] == utc_ms(2026, 6, 12, 4)
    labels = local_days(np.array([utc_ms(2026, 6, 12, 3, 59)], np.int64), moved)
    assert labels[0] == (dt.date(2026, 6, 11) - dt.date(1970, 1, 1)).days


def test_asia_kolkata_days_start_at_18_30_utc() -> None:
    zone = [ZoneSpan(0, "Asia/Kolkata")]
    t = np.array([utc_ms(2026, 1, 1, 18, 29), utc_ms(2026, 1, 1, 18, 30)], np.int64)
    first, second = local_days(t, zone)
    assert second - first == 1
    assert day_bounds(dt.date(2026, 1, 2), "Asia/Kolkata") == (
        utc_ms(2026, 1, 1, 18, 30), utc_ms(2026, 1, 2, 18, 30))
    figs = daily("steps", {"w": (t, np.array([10.0, 20.0]))}, ["w"], zone,
                 [dt.date(2026, 1, 1), dt.date(2026, 1, 2)])
    assert [f.value for f in figs] == [10.0, 20.0]


def _quarter_hours(start_ms: int, hours: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    t = start_ms + np.arange(hours * 4, dtype=np.int64) * 900_000
    return t, np.full(hours * 4, value)


def test_overlapping_steps_count_the_priority_source_only() -> None:
    day = dt.date(2026, 6, 1)
    start, _ = day_bounds(day, "Europe/Paris")
    watch = _quarter_hours(start, 24, 100.0)  # all day
    phone = _quarter_hours(start + 8 * H, 12, 80.0)  # 08:00-20:00, in the pocket
    per_source = {"watch-1": watch, "phone-1": phone}
    models = {"watch-1": "watch", "phone-1": "phone"}
    order = priority_order(list(per_source), models, "steps")
    assert order == ["watch-1", "phone-1"]
    (fig,) = daily("steps", per_source, order, PARIS, [day])
    assert fig.value == 9600  # the watch's count: not the sum (13440), not the max
    assert fig.sources == {"watch-1": 9600, "phone-1": 3840}  # each still readable
    assert fig.counted == {"watch-1": 96}
    # The patient prefers the phone: it counts where it has data, the watch fills the rest.
    order = priority_order(list(per_source), models, "steps", ["phone-1"])
    (fig,) = daily("steps", per_source, order, PARIS, [day])
    assert fig.value == 3840 + 12 * 4 * 100


def test_merge_keeps_one_source_per_bucket() -> None:
    a = (np.array([0, 60_000, 600_000], np.int64), np.array([1.0, 2.0, 3.0]))
    b = (np.array([30_000, 400_000], np.int64), np.array([9.0, 8.0]))
    (t, v), ranks = merge_sources("heart_rate", {"a": a, "b": b}, ["a", "b"])
    # 0-5 min: a has data, so b's sample there is dropped; 5-10 min: only b has some (it
    # fills a's gap); 10-15 min: a.
    assert t.tolist() == [0, 60_000, 400_000, 600_000] and ranks.tolist() == [0, 0, 1, 0]
    (t, v), ranks = merge_sources("heart_rate", {"a": a, "b": b}, ["b", "a"])
    assert t.tolist() == [30_000, 400_000, 600_000] and v.tolist() == [9.0, 8.0, 3.0]


def test_resting_heart_rate_and_nights() -> None:
    start, _ = day_bounds(dt.date(2026, 6, 1), "Europe/Paris")
    t = start + np.arange(0, 24 * 60, dtype=np.int64) * 60_000
    v = np.where(np.arange(24 * 60) < 6 * 60, 52.0, 80.0)  # six resting hours
    (fig,) = daily("heart_rate", {"w": (t, v)}, ["w"], PARIS, [dt.date(2026, 6, 1)])
    assert fig.value == 52.0 and fig.maximum == 80.0
    # Sleep from 23:00 to 07:00 local belongs to the morning it ends on.
    night = start - H + np.arange(8 * 60, dtype=np.int64) * 60_000
    figs = daily("sleep_duration", {"w": (night, np.ones(8 * 60))}, ["w"], PARIS,
                 [dt.date(2026, 5, 31), dt.date(2026, 6, 1)])
    assert [f.value for f in figs] == [None, 480.0]


def test_zone_names_are_checked() -> None:
    assert validate_zone("Asia/Kolkata") == "Asia/Kolkata"
    for bad in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(ValueError, match="IANA"):
            validate_zone(bad)


def test_the_day_of_a_flight_lasts_as_long_as_the_patient_lived_it() -> None:
    # Paris to Montreal at 10:00 UTC on June 11: the day starts at Paris midnight and ends
    # at Montreal midnight, 30 hours; DayFigure.hours used to take one zone at UTC noon.
    moved = [*PARIS, ZoneSpan(utc_ms(2026, 6, 11, 10), "America/Montreal")]
    assert day_pieces(moved, dt.date(2026, 6, 11)) == [
        (utc_ms(2026, 6, 10, 22), utc_ms(2026, 6, 11, 10)),
        (utc_ms(2026, 6, 11, 10), utc_ms(2026, 6, 12, 4))]
    t, v = hourly(utc_ms(2026, 6, 9), 24 * 5, 10.0)
    figs = daily("steps", {"w": (t, v)}, ["w"], moved,
                 [dt.date(2026, 6, d) for d in (10, 11, 12)])
    assert [(f.hours, f.value) for f in figs] == [(24.0, 240.0), (30.0, 300.0), (24.0, 240.0)]
    assert figs[1].start_ms == utc_ms(2026, 6, 10, 22)
    # Flying back east at Montreal 23:00 (Paris 05:00 the next day): June 12 loses 6 hours
    # and June 13 starts at the landing, not at Paris midnight.
    back = [*moved, ZoneSpan(utc_ms(2026, 6, 13, 3), "Europe/Paris")]
    assert day_hours(back, dt.date(2026, 6, 12)) == 23.0
    assert day_pieces(back, dt.date(2026, 6, 13)) == [
        (utc_ms(2026, 6, 13, 3), utc_ms(2026, 6, 13, 22))]


def test_a_day_split_by_a_clock_turned_back_counts_both_pieces() -> None:
    # At Paris 01:00 on June 12 (23:00 UTC) the zone becomes Montreal (19:00 on June 11):
    # June 11 resumes for five hours after one hour of June 12.
    moved = [*PARIS, ZoneSpan(utc_ms(2026, 6, 11, 23), "America/Montreal")]
    assert day_pieces(moved, dt.date(2026, 6, 11)) == [
        (utc_ms(2026, 6, 10, 22), utc_ms(2026, 6, 11, 22)),
        (utc_ms(2026, 6, 11, 23), utc_ms(2026, 6, 12, 4))]
    assert day_hours(moved, dt.date(2026, 6, 12)) == 1 + 24
    t = np.arange(utc_ms(2026, 6, 10, 22), utc_ms(2026, 6, 13, 4), H, dtype=np.int64)
    labels = local_days(t, moved)
    for day in (dt.date(2026, 6, 11), dt.date(2026, 6, 12)):
        n = (day - dt.date(1970, 1, 1)).days
        assert np.count_nonzero(labels == n) == day_hours(moved, day)


def test_nights_run_from_noon_to_noon_on_the_clock() -> None:
    # The night that ends on 2026-03-29 (clocks forward at 02:00) lasts 23 hours.
    start, end = day_bounds(dt.date(2026, 3, 29), "Europe/Paris", 12 * H)
    assert (start, end) == (utc_ms(2026, 3, 28, 11), utc_ms(2026, 3, 29, 10))
    assert day_hours(PARIS, dt.date(2026, 3, 29), 12 * H) == 23.0


def test_days_touched_by_a_range() -> None:
    assert days_touched(PARIS, utc_ms(2026, 6, 1, 21, 59), utc_ms(2026, 6, 2, 22, 1)) == [
        dt.date(2026, 6, 1), dt.date(2026, 6, 2), dt.date(2026, 6, 3)]
    assert days_touched(PARIS, utc_ms(2026, 6, 1, 22), utc_ms(2026, 6, 2, 22)) == [
        dt.date(2026, 6, 2)]
    assert days_touched(PARIS, 5, 5) == []
