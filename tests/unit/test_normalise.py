"""Normalisation: canonical units, the acceptance window, plausibility, pack bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from vitals.catalogue import METRIC_NAMES
from vitals.normalise import Flag, Normalised, Reject, Window, normalise
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
