"""The device's renewal timing (firmware_sim/renewal_policy.py): when a certificate is
renewed, and how long a device waits after a failure or a refusal."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from firmware_sim.renewal_policy import (
    REFUSED_WAIT_S,
    RETRY_MAX_S,
    RETRY_MIN_S,
    RenewalPolicy,
)

ISSUED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


class Fixed(random.Random):
    """A random source that always draws ``value`` (in [0, 1))."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_moment_falls_between_a_half_and_a_third_of_the_life_before_the_end() -> None:
    policy = RenewalPolicy(random.Random(7))
    end = ISSUED + YEAR
    moments = [policy.renew_at(ISSUED, end) for _ in range(5000)]
    assert all(end - YEAR / 2 < m <= end - YEAR / 3 for m in moments)
    # Spread over the whole window (a fleet does not renew at once), not bunched.
    window = (YEAR / 2 - YEAR / 3).total_seconds()
    lows = sum(m < end - YEAR / 2 + YEAR / 60 for m in moments)  # first tenth of the window
    highs = sum(m > end - YEAR / 3 - YEAR / 60 for m in moments)  # last tenth
    assert 350 < lows < 650 and 350 < highs < 650
    assert max(moments) - min(moments) > dt.timedelta(seconds=window * 0.99)


def test_the_jitter_is_zero_to_a_sixth_of_the_life_earlier() -> None:
    end = ISSUED + dt.timedelta(seconds=600)
    assert RenewalPolicy(Fixed(0.0)).renew_at(ISSUED, end) == end - dt.timedelta(seconds=200)
    latest_draw = RenewalPolicy(Fixed(0.999999)).renew_at(ISSUED, end)
    assert end - dt.timedelta(seconds=300) < latest_draw < end - dt.timedelta(seconds=299.99)
    half = RenewalPolicy(Fixed(0.5)).renew_at(ISSUED, end)
    assert half == end - dt.timedelta(seconds=250)


def test_a_short_certificate_with_a_backdated_start_is_due_at_once() -> None:
    # The CA backdates by 5 min for clock skew: a 30 s certificate lives 330 s, and a third
    # of that (110 s) before its end is already past when it is issued.
    now = dt.datetime.now(dt.UTC)
    moment = RenewalPolicy().renew_at(now - dt.timedelta(minutes=5),
                                      now + dt.timedelta(seconds=30))
    assert moment < now


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RenewalPolicy().renew_at(ISSUED.replace(tzinfo=None), ISSUED + YEAR)


def test_the_retry_step_starts_at_a_minute_doubles_and_stops_at_six_hours() -> None:
    low, high = RenewalPolicy(Fixed(0.0)), RenewalPolicy(Fixed(1.0))  # uniform's two ends
    steps = [high.retry_delay(n) for n in range(1, 12)]
    assert steps[:5] == [60.0, 120.0, 240.0, 480.0, 960.0]
    assert steps[-1] == RETRY_MAX_S == 6 * 3600.0
    assert all(b == min(2 * a, RETRY_MAX_S) for a, b in itertools.pairwise(steps))
    assert high.retry_delay(10_000) == RETRY_MAX_S  # no overflow after a long outage
    # Half of each step is fixed: the shortest wait is half the step.
    assert [low.retry_delay(n) for n in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert low.retry_delay(50) == RETRY_MAX_S / 2
    assert RETRY_MIN_S == 60.0


def test_the_retry_wait_is_random_in_its_upper_half() -> None:
    policy = RenewalPolicy(random.Random(3))
    for failures in (1, 4, 20):
        step = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (failures - 1))
        waits = [policy.retry_delay(failures) for _ in range(2000)]
        assert all(step / 2 <= w <= step for w in waits)
        assert len(set(waits)) > 1900  # a fleet that failed together retries apart
        assert min(waits) < step * 0.55 and max(waits) > step * 0.95


def test_retry_delay_is_for_failures_only() -> None:
    with pytest.raises(ValueError):
        RenewalPolicy().retry_delay(0)


def test_a_refusal_waits_six_hours_whatever_the_draw() -> None:
    assert RenewalPolicy(Fixed(0.0)).refused_delay() == REFUSED_WAIT_S == 6 * 3600.0
    assert RenewalPolicy(Fixed(0.9)).refused_delay() == REFUSED_WAIT_S
    assert RenewalPolicy(refused_wait_s=2.0).refused_delay() == 2.0  # tests shorten it


def test_the_same_seed_gives_the_same_moments() -> None:
    end = ISSUED + YEAR
    first = [RenewalPolicy(random.Random(11)).renew_at(ISSUED, end) for _ in range(3)]
    assert len(set(first)) == 1
    assert RenewalPolicy(random.Random(12)).renew_at(ISSUED, end) != first[0]
