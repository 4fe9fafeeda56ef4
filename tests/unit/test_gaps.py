"""The gap tracker on its own: what is missing, when it is asked for, when it is given up."""

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from broker_bridge.gaps import GapConfig, GapTracker, resend_request

CFG = GapConfig(grace_s=10, retry_s=30, max_requests=3, max_ranges=4)


def _tracker(*seqs, now=0.0, seed=None):
    tracker = GapTracker(CFG)
    for seq in seqs:
        tracker.seen("d", seq, now)
    if seed is not False:
        tracker.seed("d", seed if seed is not None else min(seqs) - 1, now)
    return tracker


def test_in_order_numbers_leave_no_gap():
    tracker = _tracker(1, 2, 3, 4)
    assert tracker.missing("d") == [] and tracker.due(100) == {}


def test_a_skipped_number_is_a_gap_but_only_asked_for_after_the_grace_period():
    tracker = _tracker(1, 2, 5, 6)
    assert tracker.missing("d") == [(3, 4)]
    assert tracker.due(9.9) == {}  # it may still be in flight
    assert tracker.due(10) == {"d": [(3, 4)]}


def test_a_late_arrival_within_the_grace_period_is_not_a_gap():
    tracker = _tracker(1, 3)
    tracker.seen("d", 2, 5.0)
    assert tracker.missing("d") == [] and tracker.due(100) == {}
    assert tracker.stats.filled == 1


def test_a_number_filled_in_the_middle_splits_the_gap():
    tracker = _tracker(1, 10)
    tracker.seen("d", 5, 1.0)
    assert tracker.missing("d") == [(2, 4), (6, 9)]
    tracker.settle("d", 2, 3)
    tracker.settle("d", 7, 100)
    assert tracker.missing("d") == [(4, 4), (6, 6)]


def test_duplicates_and_old_numbers_change_nothing():
    tracker = _tracker(5, 6, 8)
    for seq in (5, 6, 8, 6, 1):
        tracker.seen("d", seq, 2.0)
    assert tracker.missing("d") == [(7, 7)]


def test_a_gap_asked_for_is_asked_again_only_after_the_retry_delay_then_given_up():
    tracker = _tracker(1, 3)
    assert tracker.asked("d", tracker.due(10)["d"], 10) == [(2, 2)]
    assert tracker.due(20) == {}
    for t in (40, 70):
        assert tracker.due(t) == {"d": [(2, 2)]}
        tracker.asked("d", [(2, 2)], t)
    assert tracker.due(99) == {}  # asked max_requests times; waiting for the last answer
    assert tracker.due(100) == {} and tracker.missing("d") == []
    assert tracker.stats.given_up == 1


def test_first_sight_is_seeded_from_what_was_stored_before():
    tracker = GapTracker(CFG)
    tracker.seen("d", 50, 0.0)
    tracker.seen("d", 48, 0.0)  # a redelivery below the first number seen
    assert tracker.unseeded() == {"d": 48} and tracker.missing("d") == [(49, 49)]
    tracker.seed("d", 45, 0.0)  # the database has up to 45 from before this worker started
    assert tracker.unseeded() == {}
    assert tracker.missing("d") == [(46, 47), (49, 49)]


def test_a_device_with_nothing_stored_before_misses_from_one():
    tracker = _tracker(3, seed=False)
    tracker.seed("d", None, 0.0)
    assert tracker.missing("d") == [(1, 2)]


def test_a_device_seeded_right_below_has_no_gap():
    tracker = _tracker(3, seed=False)
    tracker.seed("d", 2, 0.0)
    assert tracker.missing("d") == []


def test_too_many_gaps_give_up_the_oldest():
    tracker = _tracker(1, 3, 5, 7, 9, 11, 14)
    assert tracker.missing("d") == [(6, 6), (8, 8), (10, 10), (12, 13)]
    assert tracker.stats.given_up == 2


def test_devices_are_tracked_apart():
    tracker = GapTracker(CFG)
    for device, seq in (("a", 1), ("b", 1), ("a", 3), ("b", 2)):
        tracker.seen(device, seq, 0.0)
    assert tracker.missing("a") == [(2, 2)] and tracker.missing("b") == []


def test_the_request_payload_is_json_with_inclusive_ranges():
    assert json.loads(resend_request([(3, 4), (9, 9)])) == {"resend": [[3, 4], [9, 9]]}


@given(st.lists(st.integers(1, 60), min_size=1, max_size=80))
def test_missing_is_exactly_the_numbers_not_seen_between_the_first_and_the_highest(seqs):
    tracker = GapTracker(GapConfig(max_ranges=1000))
    for seq in seqs:
        tracker.seen("d", seq, 0.0)
    tracker.seed("d", min(seqs) - 1, 0.0)
    missing = {s for lo, hi in tracker.missing("d") for s in range(lo, hi + 1)}
    assert missing == set(range(min(seqs), max(seqs) + 1)) - set(seqs)
    ranges = tracker.missing("d")
    assert ranges == sorted(ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))  # disjoint, apart
