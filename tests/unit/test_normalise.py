"""Normalisation: canonical units, the acceptance window, plausibility, pack bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from vitals.catalogue import METRIC_NAMES
from vitals.normalise import (
    Flag,
    Normalised,
    Reject,
    Window,
    _group_order,
    normalise,
    raw_values,
)
from vitals.senml import Pack

RECEIVED_AT = 1_750_000_000.0
DAY_S = 24 * 3600.0


def one(metric: str, unit: str, value: float, t: float = RECEIVED_AT - 60,
        received_at: float = RECEIVED_AT, window: Window | None = None) -> Normalised:
    norm = normalise([Pack([metric], [unit], [t], [value])], [received_at], window or Window())
    assert len(norm) == 1
    return norm


# --- unit conversions --------------------------------------------------------------------


def test_pounds_avoirdupois_become_kilograms() -> None:
    norm = one("body_weight", "[lb_av]", 150.0)
    assert norm.value[0] == pytest.approx(150 * 0.45359237)  # the international pound
    assert norm.reject[0] == Reject.ACCEPTED


def test_grams_become_kilograms() -> None:
    assert one("body_weight", "g", 72_500.0).value[0] == pytest.approx(72.5)


@pytest.mark.parametrize(("fahrenheit", "celsius"), [(98.6, 37.0), (100.4, 38.0), (95.0, 35.0)])
def test_fahrenheit_becomes_celsius(fahrenheit: float, celsius: float) -> None:
    norm = one("body_temperature", "[degF]", fahrenheit)
    assert norm.value[0] == pytest.approx(celsius)
    assert norm.reject[0] == Reject.ACCEPTED


def test_kelvin_becomes_celsius() -> None:
    assert one("body_temperature", "K", 310.15).value[0] == pytest.approx(37.0)


def test_glucose_in_mmol_per_litre_becomes_mg_per_decilitre() -> None:
    norm = one("blood_glucose", "mmol/L", 5.5)
    assert norm.value[0] == pytest.approx(5.5 * 18.016)
    assert norm.reject[0] == Reject.ACCEPTED


def test_canonical_unit_is_kept_as_is() -> None:
    norm = one("heart_rate", "/min", 72.0)
    assert norm.value[0] == 72.0
    assert METRIC_NAMES[norm.metric[0]] == "heart_rate"


def test_fraction_becomes_percent_for_spo2() -> None:
    assert one("spo2", "/", 0.97).value[0] == pytest.approx(97.0)


def test_device_time_becomes_utc_milliseconds() -> None:
    assert one("heart_rate", "/min", 70.0, t=RECEIVED_AT - 1.2345).t_ms[0] == round(
        (RECEIVED_AT - 1.2345) * 1000)


# --- acceptance window -------------------------------------------------------------------


def test_sample_older_than_thirty_days_is_outside_the_window() -> None:
    norm = one("heart_rate", "/min", 70.0, t=RECEIVED_AT - 30 * DAY_S - 1)
    assert norm.reject[0] == Reject.OUTSIDE_TIME_WINDOW


def test_sample_just_under_thirty_days_old_is_accepted() -> None:
    assert one("heart_rate", "/min", 70.0, t=RECEIVED_AT - 30 * DAY_S + 1).reject[0] == (
        Reject.ACCEPTED)


def test_sample_more_than_five_minutes_in_the_future_is_outside_the_window() -> None:
    norm = one("heart_rate", "/min", 70.0, t=RECEIVED_AT + 5 * 60 + 1)
    assert norm.reject[0] == Reject.OUTSIDE_TIME_WINDOW


def test_sample_less_than_five_minutes_in_the_future_is_accepted() -> None:
    assert one("heart_rate", "/min", 70.0, t=RECEIVED_AT + 5 * 60 - 1).reject[0] == (
        Reject.ACCEPTED)


def test_window_is_configurable() -> None:
    narrow = Window(past_s=3600.0, future_s=0.0)
    assert one("heart_rate", "/min", 70.0, t=RECEIVED_AT - 3601,
               window=narrow).reject[0] == Reject.OUTSIDE_TIME_WINDOW
    assert one("heart_rate", "/min", 70.0, t=RECEIVED_AT + 1,
               window=narrow).reject[0] == Reject.OUTSIDE_TIME_WINDOW
    assert one("heart_rate", "/min", 70.0, t=RECEIVED_AT - 3599,
               window=narrow).reject[0] == Reject.ACCEPTED


@pytest.mark.parametrize("t", [1e17, -1e17, 1.7e308, -1.7e308])
def test_time_beyond_the_millisecond_range_is_outside_the_window(t: float) -> None:
    # decode_json accepts any finite time: converting one beyond +-9.2e15 s to int64
    # milliseconds must not be an invalid cast (a RuntimeWarning from numpy, an undefined
    # value); the sample is simply outside the window.
    assert one("heart_rate", "/min", 70.0, t=t).reject[0] == Reject.OUTSIDE_TIME_WINDOW


# --- ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "unit", "value"), [
    ("heart_rate", "/min", 400.0), ("heart_rate", "/min", 5.0), ("heart_rate", "/min", -70.0),
    ("spo2", "%", 101.0), ("body_weight", "[lb_av]", 2000.0),
    ("body_temperature", "[degF]", 212.0), ("blood_glucose", "mmol/L", 100.0),
])
def test_impossible_value_is_rejected(metric: str, unit: str, value: float) -> None:
    assert one(metric, unit, value).reject[0] == Reject.IMPOSSIBLE_VALUE


@pytest.mark.parametrize(("metric", "unit", "value"), [
    ("heart_rate", "/min", 250.0), ("heart_rate", "/min", 25.0), ("spo2", "%", 70.0),
    ("body_temperature", "Cel", 43.0), ("blood_glucose", "mmol/L", 36.0),
])
def test_implausible_value_is_accepted_with_a_flag(metric: str, unit: str, value: float) -> None:
    norm = one(metric, unit, value)
    assert norm.reject[0] == Reject.ACCEPTED
    assert norm.flags[0] & Flag.IMPLAUSIBLE


def test_ordinary_value_is_accepted_without_flags() -> None:
    norm = one("heart_rate", "/min", 70.0)
    assert (norm.reject[0], norm.flags[0]) == (Reject.ACCEPTED, Flag.NONE)


def test_range_limits_are_inclusive() -> None:
    assert one("heart_rate", "/min", 300.0).reject[0] == Reject.ACCEPTED
    assert one("heart_rate", "/min", 220.0).flags[0] == Flag.NONE


# --- unknowns and precedence -------------------------------------------------------------


def test_unknown_metric_is_rejected_with_metric_minus_one() -> None:
    norm = one("mood", "/min", 3.0)
    assert norm.reject[0] == Reject.UNKNOWN_METRIC
    assert norm.metric[0] == -1


def test_unknown_unit_for_a_known_metric_is_rejected() -> None:
    norm = one("heart_rate", "Hz", 1.2)
    assert norm.reject[0] == Reject.UNKNOWN_UNIT
    assert METRIC_NAMES[norm.metric[0]] == "heart_rate"


def test_unit_of_another_metric_is_unknown() -> None:
    assert one("heart_rate", "kg", 70.0).reject[0] == Reject.UNKNOWN_UNIT


def test_most_basic_problem_is_the_one_reported() -> None:
    old = RECEIVED_AT - 60 * DAY_S
    assert one("mood", "Hz", 1e9, t=old).reject[0] == Reject.UNKNOWN_METRIC
    assert one("heart_rate", "Hz", 1e9, t=old).reject[0] == Reject.UNKNOWN_UNIT
    assert one("heart_rate", "/min", 1e9, t=old).reject[0] == Reject.IMPOSSIBLE_VALUE


# --- several packs in one call -----------------------------------------------------------


def test_several_packs_keep_their_pack_index_and_their_own_receive_time() -> None:
    packs = [
        Pack(["heart_rate", "heart_rate"], ["/min", "/min"], [1000.0, 1001.0], [70.0, 71.0]),
        Pack(["body_weight"], ["[lb_av]"], [2000.0], [150.0]),
        Pack(["mood", "spo2", "heart_rate"], ["1", "/", "/min"], [3000.0, 3000.0, 3500.0],
             [1.0, 0.98, 70.0]),
    ]
    # 3000 s is in the window of its own pack (received 3060), not of the first (1060).
    norm = normalise(packs, [1000.0 + 60, 2000.0 + 60, 3000.0 + 60])
    assert norm.pack.tolist() == [0, 0, 1, 2, 2, 2]
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.ACCEPTED, Reject.ACCEPTED,
                                    Reject.UNKNOWN_METRIC, Reject.ACCEPTED,
                                    Reject.OUTSIDE_TIME_WINDOW]
    assert norm.value[[0, 1, 2, 4]] == pytest.approx([70.0, 71.0, 150 * 0.45359237, 98.0])
    assert norm.t_ms.tolist() == [1_000_000, 1_001_000, 2_000_000, 3_000_000, 3_000_000,
                                  3_500_000]


def test_same_metric_and_unit_in_different_packs_convert_alike() -> None:
    packs = [Pack(["body_temperature"], ["[degF]"], [RECEIVED_AT], [98.6]),
             Pack(["body_temperature"], ["Cel"], [RECEIVED_AT], [37.0]),
             Pack(["body_temperature"], ["[degF]"], [RECEIVED_AT], [100.4])]
    norm = normalise(packs, [RECEIVED_AT] * 3)
    assert norm.value == pytest.approx([37.0, 37.0, 38.0])


def test_no_packs_gives_an_empty_result() -> None:
    norm = normalise([], [])
    assert len(norm) == 0
    assert all(len(a) == 0 for a in (norm.pack, norm.metric, norm.t_ms, norm.flags,
                                      norm.reject))


def test_column_dtypes_match_the_storage_layout() -> None:
    norm = one("heart_rate", "/min", 70.0)
    assert (norm.pack.dtype, norm.metric.dtype, norm.t_ms.dtype, norm.value.dtype,
            norm.flags.dtype, norm.reject.dtype) == (
        np.int32, np.int16, np.int64, np.float64, np.uint8, np.uint8)


# --- deduplication -----------------------------------------------------------------------

T0 = RECEIVED_AT - 120


def hr(values: list[float], start: float = T0, step: float = 1.0, metric: str = "heart_rate",
       unit: str = "/min") -> Pack:
    n = len(values)
    return Pack([metric] * n, [unit] * n, [start + i * step for i in range(n)], values)


def test_the_same_sample_twice_in_one_pack_is_kept_once() -> None:
    norm = normalise([Pack(["heart_rate"] * 2, ["/min"] * 2, [T0, T0], [70.0, 70.0])],
                     [RECEIVED_AT])
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.DUPLICATE]
    assert norm.flags.tolist() == [Flag.NONE, Flag.NONE]


def test_a_different_value_at_the_same_time_is_a_conflict_the_first_kept_and_flagged() -> None:
    norm = normalise([Pack(["heart_rate"] * 2, ["/min"] * 2, [T0, T0], [70.0, 90.0])],
                     [RECEIVED_AT])
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.CONFLICT]
    assert norm.flags[0] & Flag.CONFLICT


def test_samples_of_one_source_in_two_packs_are_deduplicated_across_them() -> None:
    packs = [hr([70.0, 71.0]), hr([71.0, 72.0], start=T0 + 1)]
    norm = normalise(packs, [RECEIVED_AT] * 2, sources=["d1", "d1"])
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.ACCEPTED, Reject.DUPLICATE,
                                    Reject.ACCEPTED]


def test_samples_of_two_sources_at_the_same_time_are_both_kept() -> None:
    packs = [hr([70.0]), hr([75.0])]
    assert normalise(packs, [RECEIVED_AT] * 2, sources=["d1", "d2"]).reject.tolist() == [
        Reject.ACCEPTED, Reject.ACCEPTED]


def test_without_sources_each_pack_is_its_own_source() -> None:
    assert normalise([hr([70.0]), hr([70.0])], [RECEIVED_AT] * 2).reject.tolist() == [
        Reject.ACCEPTED, Reject.ACCEPTED]


def test_the_first_in_input_order_wins_whatever_the_order_in_time() -> None:
    first = Pack(["heart_rate"] * 2, ["/min"] * 2, [T0 + 5, T0], [80.0, 70.0])
    second = Pack(["heart_rate"], ["/min"], [T0 + 5], [81.0])
    norm = normalise([first, second], [RECEIVED_AT] * 2, sources=["d", "d"])
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.ACCEPTED, Reject.CONFLICT]
    assert norm.flags[0] & Flag.CONFLICT and not norm.flags[1] & Flag.CONFLICT


def test_a_rejected_sample_does_not_hide_an_accepted_one_at_the_same_time() -> None:
    norm = normalise([Pack(["heart_rate"] * 2, ["/min"] * 2, [T0, T0], [999.0, 70.0])],
                     [RECEIVED_AT])
    assert norm.reject.tolist() == [Reject.IMPOSSIBLE_VALUE, Reject.ACCEPTED]
    assert norm.flags[1] == Flag.NONE


def test_the_same_time_in_two_metrics_is_no_duplicate() -> None:
    norm = normalise([Pack(["heart_rate", "spo2"], ["/min", "%"], [T0, T0], [70.0, 97.0])],
                     [RECEIVED_AT])
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.ACCEPTED]


def test_times_equal_to_the_millisecond_are_the_same_time() -> None:
    norm = normalise([hr([70.0, 70.0], step=0.0004)], [RECEIVED_AT])
    assert norm.reject.tolist() == [Reject.ACCEPTED, Reject.DUPLICATE]


def test_one_source_per_pack_is_required() -> None:
    with pytest.raises(ValueError, match="one source per pack"):
        normalise([hr([70.0])], [RECEIVED_AT], sources=["a", "b"])


# --- artefact flags ----------------------------------------------------------------------


def flagged(norm: Normalised, flag: Flag) -> list[int]:
    return np.flatnonzero(norm.flags & flag).tolist()


def test_a_one_second_heart_rate_spike_is_flagged_and_its_neighbours_are_not() -> None:
    norm = normalise([hr([70.0, 71.0, 140.0, 72.0, 71.0])], [RECEIVED_AT])
    assert flagged(norm, Flag.HR_SPIKE) == [2]
    assert norm.reject.tolist() == [Reject.ACCEPTED] * 5  # flagged, never dropped
    assert norm.value.tolist() == [70.0, 71.0, 140.0, 72.0, 71.0]  # nor changed


def test_a_one_second_heart_rate_drop_is_flagged() -> None:
    assert flagged(normalise([hr([80.0, 81.0, 40.0, 80.0])], [RECEIVED_AT]),
                   Flag.HR_SPIKE) == [2]


def test_a_two_second_heart_rate_spike_is_flagged_whole() -> None:
    assert flagged(normalise([hr([70.0, 71.0, 130.0, 135.0, 72.0])], [RECEIVED_AT]),
                   Flag.HR_SPIKE) == [2, 3]


def test_a_sustained_rise_is_no_spike() -> None:
    assert flagged(normalise([hr([70.0, 71.0, 130.0, 131.0, 132.0, 72.0])], [RECEIVED_AT]),
                   Flag.HR_SPIKE) == []
    assert flagged(normalise([hr([70.0, 71.0, 130.0, 131.0, 132.0])], [RECEIVED_AT]),
                   Flag.HR_SPIKE) == []


def test_a_jump_of_exactly_the_threshold_is_no_spike() -> None:
    assert flagged(normalise([hr([70.0, 100.0, 70.0])], [RECEIVED_AT]), Flag.HR_SPIKE) == []
    assert flagged(normalise([hr([70.0, 100.5, 70.0])], [RECEIVED_AT]), Flag.HR_SPIKE) == [1]


def test_samples_far_apart_in_time_are_not_judged() -> None:
    # Spot checks a minute apart: a change between them is a trend, not a spike.
    assert flagged(normalise([hr([70.0, 140.0, 70.0], step=60.0)], [RECEIVED_AT]),
                   Flag.HR_SPIKE) == []


def test_a_spike_is_found_whatever_the_order_of_the_pack() -> None:
    pack = Pack(["heart_rate"] * 3, ["/min"] * 3, [T0 + 2, T0, T0 + 1], [70.0, 70.0, 140.0])
    assert flagged(normalise([pack], [RECEIVED_AT]), Flag.HR_SPIKE) == [2]


def test_interleaved_metrics_are_judged_each_against_its_own_neighbours() -> None:
    pack = Pack(["heart_rate", "spo2"] * 3, ["/min", "%"] * 3,
                [T0, T0, T0 + 1, T0 + 1, T0 + 2, T0 + 2], [70.0, 97.0, 140.0, 90.0, 70.0, 97.0])
    norm = normalise([pack], [RECEIVED_AT])
    assert flagged(norm, Flag.HR_SPIKE) == [2]
    assert flagged(norm, Flag.SPO2_DIP) == [3]


def test_neighbours_in_another_pack_of_the_same_source_count() -> None:
    packs = [hr([70.0, 71.0]), hr([140.0, 71.0], start=T0 + 2)]
    assert flagged(normalise(packs, [RECEIVED_AT] * 2, sources=["d", "d"]),
                   Flag.HR_SPIKE) == [2]
    assert flagged(normalise(packs, [RECEIVED_AT] * 2), Flag.HR_SPIKE) == []
    assert flagged(normalise(packs, [RECEIVED_AT] * 2, sources=["d", "e"]),
                   Flag.HR_SPIKE) == []


@pytest.mark.parametrize("dip", [[88.0], [88.0, 87.0], [88.0, 87.0, 89.0]])
def test_a_short_isolated_spo2_dip_is_flagged(dip: list[float]) -> None:
    norm = normalise([hr([97.0, 97.0, *dip, 96.0], metric="spo2", unit="%")], [RECEIVED_AT])
    assert flagged(norm, Flag.SPO2_DIP) == list(range(2, 2 + len(dip)))


def test_a_desaturation_of_four_seconds_or_more_is_real_and_not_flagged() -> None:
    norm = normalise([hr([97.0, 88.0, 87.0, 86.0, 88.0, 97.0], metric="spo2", unit="%")],
                     [RECEIVED_AT])
    assert flagged(norm, Flag.SPO2_DIP) == []


def test_an_spo2_rise_and_a_small_dip_are_not_flagged() -> None:
    assert flagged(normalise([hr([90.0, 99.0, 90.0], metric="spo2", unit="%")],
                             [RECEIVED_AT]), Flag.SPO2_DIP) == []
    assert flagged(normalise([hr([97.0, 94.0, 97.0], metric="spo2", unit="%")],
                             [RECEIVED_AT]), Flag.SPO2_DIP) == []


def test_spo2_in_fractions_is_judged_in_percent() -> None:
    norm = normalise([hr([0.97, 0.88, 0.97], metric="spo2", unit="/")], [RECEIVED_AT])
    assert flagged(norm, Flag.SPO2_DIP) == [1]


def test_a_duplicate_neighbour_is_judged_once() -> None:
    pack = Pack(["heart_rate"] * 4, ["/min"] * 4, [T0, T0 + 1, T0 + 1, T0 + 2],
                [70.0, 140.0, 140.0, 70.0])
    norm = normalise([pack], [RECEIVED_AT])
    assert norm.reject.tolist()[2] == Reject.DUPLICATE
    assert flagged(norm, Flag.HR_SPIKE) == [1]


def test_rejected_samples_are_no_neighbours() -> None:
    # The impossible 999 is rejected; 70, 140, 70 around it still make a spike.
    pack = Pack(["heart_rate"] * 4, ["/min"] * 4, [T0, T0 + 1, T0 + 2, T0 + 3],
                [70.0, 999.0, 140.0, 70.0])
    assert flagged(normalise([pack], [RECEIVED_AT]), Flag.HR_SPIKE) == [2]


# --- device clock ------------------------------------------------------------------------


def test_clock_offset_is_the_newest_accepted_sample_time_minus_the_receive_time() -> None:
    packs = [hr([70.0, 71.0], start=RECEIVED_AT - 10),
             hr([70.0], start=RECEIVED_AT + 30),
             hr([999.0], start=RECEIVED_AT)]  # nothing accepted
    norm = normalise(packs, [RECEIVED_AT] * 3)
    assert norm.clock_offset_s[:2].tolist() == [-9.0, 30.0]
    assert np.isnan(norm.clock_offset_s[2])


def test_a_clock_ahead_by_more_than_a_minute_flags_every_sample_of_the_pack() -> None:
    ahead = Pack(["heart_rate", "heart_rate", "spo2"], ["/min", "/min", "%"],
                 [RECEIVED_AT - 100, RECEIVED_AT + 61, RECEIVED_AT + 600], [70.0, 71.0, 97.0])
    on_time = hr([70.0], start=RECEIVED_AT + 60)
    norm = normalise([ahead, on_time], [RECEIVED_AT] * 2)
    assert norm.reject[2] == Reject.OUTSIDE_TIME_WINDOW
    assert flagged(norm, Flag.CLOCK_AHEAD) == [0, 1]  # not the rejected one, not on_time


def test_a_clock_behind_is_not_flagged() -> None:
    # Indistinguishable from a device that buffered its readings while offline.
    norm = normalise([hr([70.0], start=RECEIVED_AT - 3 * 3600)], [RECEIVED_AT])
    assert norm.flags[0] == Flag.NONE
    assert norm.clock_offset_s[0] == -3 * 3600


def test_no_packs_gives_no_clock_offsets() -> None:
    assert normalise([], []).clock_offset_s.shape == (0,)


# --- raw values --------------------------------------------------------------------------


def test_converted_units_are_reported_per_pack_and_canonical_ones_are_not() -> None:
    packs = [Pack(["body_weight", "body_weight", "heart_rate"], ["[lb_av]", "g", "/min"],
                  [T0, T0 + 1, T0], [150.0, 70_000.0, 70.0]),
             hr([70.0]),
             Pack(["body_temperature", "body_temperature"], ["[degF]", "Cel"], [T0, T0 + 1],
                  [500.0, 37.0])]  # the converted one is impossible: nothing to record
    assert normalise(packs, [RECEIVED_AT] * 3).raw_units == {
        0: {"body_weight": ["[lb_av]", "g"]}}


@pytest.mark.parametrize(("metric", "unit", "raw"), [
    ("body_weight", "[lb_av]", [150.2, 181.4, 99.9]), ("body_temperature", "[degF]", [98.6, 101.3]),
    ("body_temperature", "K", [310.15]), ("blood_glucose", "mmol/L", [5.5, 7.1, 22.4]),
    ("spo2", "/", [0.97, 0.905]), ("heart_rate", "/min", [71.0]),
])
def test_raw_values_give_back_what_the_device_sent(metric: str, unit: str,
                                                   raw: list[float]) -> None:
    norm = normalise([Pack([metric] * len(raw), [unit] * len(raw),
                           [T0 + i for i in range(len(raw))], raw)], [RECEIVED_AT])
    assert raw_values(metric, unit, norm.value).tolist() == raw


def test_raw_values_refuse_a_unit_the_metric_does_not_accept() -> None:
    with pytest.raises(ValueError, match="not accepted"):
        raw_values("heart_rate", "kg", [70.0])


def test_each_pack_reports_its_oldest_and_newest_accepted_sample_time() -> None:
    packs = [Pack(["heart_rate"] * 3, ["/min"] * 3, [T0 + 5, T0 - 1e9, T0 + 2],
                  [70.0, 70.0, 70.0]),  # the middle one is outside the window
             hr([999.0])]
    norm = normalise(packs, [RECEIVED_AT] * 2)
    assert norm.first_ms.tolist()[0] == (T0 + 2) * 1000
    assert norm.last_ms.tolist()[0] == (T0 + 5) * 1000
    assert norm.first_ms[1] == norm.last_ms[1] == np.iinfo(np.int64).min


@pytest.mark.parametrize("span_ms", [10**6, 2**60])  # one int64 key; too wide for one
def test_grouping_sorts_by_source_metric_time_and_keeps_input_order_on_ties(
        span_ms: int) -> None:
    rng = np.random.default_rng(5)
    source = rng.integers(0, 3, 200).astype(np.int64)
    metric = rng.integers(0, 2, 200).astype(np.int16)
    t_ms = rng.choice(np.array([0, 1, span_ms], np.int64), 200)
    order = _group_order(source, metric, t_ms)
    assert order.tolist() == np.lexsort((np.arange(200), t_ms, metric, source)).tolist()


def test_a_device_clock_ahead_does_not_make_its_samples_doubtful() -> None:
    from vitals.normalise import reliable
    flags = np.array([Flag.NONE, Flag.CLOCK_AHEAD, Flag.IMPLAUSIBLE, Flag.HR_SPIKE,
                      Flag.SPO2_DIP, Flag.CONFLICT, Flag.CLOCK_AHEAD | Flag.CONFLICT],
                     dtype=np.uint8)
    assert reliable(flags).tolist() == [True, True, False, False, False, False, False]
