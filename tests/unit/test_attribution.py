"""The attribution rule of shared scales: a clear match, an ambiguous pair, a user with no
recent weight, the 2 kg floor against 3 %, and ties."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given
from hypothesis import strategies as st

from broker_bridge.attribution import (
    RECENT,
    LastWeight,
    Reason,
    attribute,
    last_before,
    tolerance,
)

NOW = dt.datetime(2026, 5, 1, 7, 30, tzinfo=dt.UTC)
YESTERDAY = NOW - dt.timedelta(days=1)
ALICE, BOB, CAROL = (uuid.UUID(int=i) for i in (1, 2, 3))


def _last(**kgs: float) -> dict[uuid.UUID, LastWeight | None]:
    ids = {"alice": ALICE, "bob": BOB, "carol": CAROL}
    return {ids[name]: LastWeight(kg, YESTERDAY) for name, kg in kgs.items()}


def test_a_clear_match_goes_to_that_user() -> None:
    result = attribute(61.2, NOW, _last(alice=60.0, bob=84.0))
    assert (result.patient_id, result.reason) == (ALICE, Reason.ATTRIBUTED)
    assert attribute(83.1, NOW, _last(alice=60.0, bob=84.0)).patient_id == BOB


def test_two_users_within_tolerance_is_ambiguous() -> None:
    result = attribute(71.0, NOW, _last(alice=70.0, bob=72.5))
    assert (result.patient_id, result.reason) == (None, Reason.AMBIGUOUS)


def test_runner_up_outside_its_tolerance_but_less_than_1kg_further_is_ambiguous() -> None:
    # Alice (100 kg, tolerance 3 kg) at 2.9 kg; Bob (60 kg, tolerance 2 kg) at 3.8 kg:
    # Bob is outside his tolerance, yet only 0.9 kg further than Alice.
    result = attribute(97.1, NOW, _last(alice=100.0, bob=93.3))
    assert result.reason == Reason.AMBIGUOUS
    # 1.1 kg further: Alice's.
    assert attribute(97.1, NOW, _last(alice=100.0, bob=93.1)).patient_id == ALICE


def test_any_user_without_a_recent_weight_holds_the_weighing() -> None:
    last = _last(alice=60.0)
    last[BOB] = None
    assert attribute(60.0, NOW, last).reason == Reason.NO_RECENT_WEIGHT
    stale = _last(alice=60.0)
    stale[BOB] = LastWeight(90.0, NOW - RECENT - dt.timedelta(seconds=1))
    assert attribute(60.0, NOW, stale).reason == Reason.NO_RECENT_WEIGHT
    fresh = _last(alice=60.0)
    fresh[BOB] = LastWeight(90.0, NOW - RECENT)
    assert attribute(60.0, NOW, fresh).patient_id == ALICE


def test_a_weight_measured_after_the_weighing_is_not_a_last_weight() -> None:
    last = _last(alice=60.0)
    last[BOB] = LastWeight(90.0, NOW + dt.timedelta(minutes=1))
    assert attribute(60.0, NOW, last).reason == Reason.NO_RECENT_WEIGHT


def test_tolerance_is_2kg_for_light_people_and_3_percent_for_heavy_ones() -> None:
    assert tolerance(50.0) == 2.0 and tolerance(66.0) == 2.0
    assert tolerance(100.0) == 3.0
    # 2.5 kg off: outside a 60 kg person's 2 kg, inside a 100 kg person's 3 kg.
    assert attribute(62.5, NOW, _last(alice=60.0, bob=120.0)).reason == Reason.NO_MATCH
    assert attribute(102.5, NOW, _last(alice=60.0, bob=100.0)).patient_id == BOB


def test_nobody_within_tolerance_is_no_match() -> None:
    assert attribute(75.0, NOW, _last(alice=60.0, bob=90.0)).reason == Reason.NO_MATCH


def test_a_tie_is_never_decided() -> None:
    # Two people with the same last weight: whatever the order, held.
    for last in (_last(alice=70.0, bob=70.0), dict(reversed(_last(alice=70.0, bob=70.0)
                                                             .items()))):
        assert attribute(70.4, NOW, last).reason == Reason.AMBIGUOUS
    # Equally far on either side.
    assert attribute(70.0, NOW, _last(alice=68.0, bob=72.0)).reason == Reason.AMBIGUOUS


def test_a_single_user_gets_their_own_weighing() -> None:
    assert attribute(60.5, NOW, _last(alice=60.0)).patient_id == ALICE


def test_last_before_picks_the_latest_at_or_before_the_moment() -> None:
    times = [NOW - dt.timedelta(days=d) for d in (10, 5, 1)]
    assert last_before(times, [60.0, 61.0, 62.0], NOW - dt.timedelta(days=3)) == LastWeight(
        61.0, times[1])
    assert last_before(times, [60.0, 61.0, 62.0], NOW - dt.timedelta(days=11)) is None
    assert last_before(times, [60.0, 61.0, 62.0], times[2]) == LastWeight(62.0, times[2])


@given(st.floats(30, 200), st.floats(30, 200), st.floats(30, 200))
def test_an_attribution_is_always_to_the_closest_within_tolerance(w: float, a: float,
                                                                   b: float) -> None:
    result = attribute(w, NOW, _last(alice=a, bob=b))
    if result.patient_id is not None:
        mine, other = (a, b) if result.patient_id == ALICE else (b, a)
        assert abs(w - mine) <= tolerance(mine)
        assert abs(w - other) > tolerance(other)
        assert abs(w - other) - abs(w - mine) >= 1.0
