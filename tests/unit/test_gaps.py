"""The gap tracker on its own: what is missing, when it is asked for, when it is given up."""

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from broker_bridge.gaps import GapConfig, GapTracker, Stream, resend_request

CFG = GapConfig(grace_s=10, retry_s=30, max_requests=3, max_ranges=4)
D, A, B = Stream("d"), Stream("a"), Stream("b")  # epoch 0: what a device without one sends


def _tracker(*seqs, now=0.0, seed=None):
    tracker = GapTracker(CFG)
    for seq in seqs:
        tracker.seen(D, seq, now)
    if seed is not False:
        tracker.seed(D, seed if seed is not None else min(seqs) - 1, now)
    return tracker


def test_in_order_numbers_leave_no_gap():
    tracker = _tracker(1, 2, 3, 4)
    assert tracker.missing(D) == [] and tracker.due(100) == {}


def test_a_skipped_number_is_a_gap_but_only_asked_for_after_the_grace_period():
    tracker = _tracker(1, 2, 5, 6)
    assert tracker.missing(D) == [(3, 4)]
    assert tracker.due(9.9) == {}  # it may still be in flight
    assert tracker.due(10) == {D: [(3, 4)]}


def test_a_late_arrival_within_the_grace_period_is_not_a_gap():
    tracker = _tracker(1, 3)
    tracker.seen(D, 2, 5.0)
    assert tracker.missing(D) == [] and tracker.due(100) == {}
    assert tracker.stats.filled == 1


def test_a_number_filled_in_the_middle_splits_the_gap():
    tracker = _tracker(1, 10)
    tracker.seen(D, 5, 1.0)
    assert tracker.missing(D) == [(2, 4), (6, 9)]
    tracker.settle(D, 2, 3)
    tracker.settle(D, 7, 100)
    assert tracker.missing(D) == [(4, 4), (6, 6)]


def test_duplicates_and_old_numbers_change_nothing():
    tracker = _tracker(5, 6, 8)
    for seq in (5, 6, 8, 6, 1):
        tracker.seen(D, seq, 2.0)
    assert tracker.missing(D) == [(7, 7)]


def test_a_gap_asked_for_is_asked_again_only_after_the_retry_delay_then_given_up():
    tracker = _tracker(1, 3)
    assert tracker.asked(D, tracker.due(10)[D], 10) == [(2, 2)]
    assert tracker.due(20) == {}
    for t in (40, 70):
        assert tracker.due(t) == {D: [(2, 2)]}
        tracker.asked(D, [(2, 2)], t)
    assert tracker.due(99) == {}  # asked max_requests times; waiting for the last answer
    assert tracker.due(100) == {} and tracker.missing(D) == []
    assert tracker.stats.given_up == 1


def test_first_sight_is_seeded_from_what_was_stored_before():
    tracker = GapTracker(CFG)
    tracker.seen(D, 50, 0.0)
    tracker.seen(D, 48, 0.0)  # a redelivery below the first number seen
    assert tracker.unseeded() == {D: 48} and tracker.missing(D) == [(49, 49)]
    tracker.seed(D, 45, 0.0)  # the database has up to 45 from before this worker started
    assert tracker.unseeded() == {}
    assert tracker.missing(D) == [(46, 47), (49, 49)]


def test_a_device_with_nothing_stored_before_misses_from_one():
    tracker = _tracker(3, seed=False)
    tracker.seed(D, None, 0.0)
    assert tracker.missing(D) == [(1, 2)]


def test_a_device_seeded_right_below_has_no_gap():
    tracker = _tracker(3, seed=False)
    tracker.seed(D, 2, 0.0)
    assert tracker.missing(D) == []


def test_too_many_gaps_give_up_the_oldest():
    tracker = _tracker(1, 3, 5, 7, 9, 11, 14)
    assert tracker.missing(D) == [(6, 6), (8, 8), (10, 10), (12, 13)]
    assert tracker.stats.given_up == 2


def test_devices_are_tracked_apart():
    tracker = GapTracker(CFG)
    for device, seq in ((A, 1), (B, 1), (A, 3), (B, 2)):
        tracker.seen(device, seq, 0.0)
    assert tracker.missing(A) == [(2, 2)] and tracker.missing(B) == []


def test_a_new_epoch_numbered_from_one_is_neither_a_gap_nor_a_regression():
    tracker = _tracker(1, 2, 3, 500)
    reset = Stream("d", 1)
    for seq in (1, 2, 3):
        tracker.seen(reset, seq, 1.0)
    tracker.seed(reset, None, 1.0)  # nothing stored in epoch 1 before
    assert tracker.missing(reset) == []
    assert tracker.due(100) == {D: [(4, 499)]}  # epoch 0's gap is still its own


def test_a_gap_in_a_new_epoch_is_asked_for_in_that_epoch():
    tracker = _tracker(1, 2)
    reset = Stream("d", 1)
    for seq in (1, 3):
        tracker.seen(reset, seq, 0.0)
    tracker.seed(reset, None, 0.0)
    assert tracker.due(10) == {reset: [(2, 2)]}


def test_an_older_epoch_is_asked_for_until_settled_then_forgotten():
    tracker = _tracker(1, 3)
    tracker.seen(Stream("d", 1), 1, 0.0)
    tracker.seed(Stream("d", 1), None, 0.0)
    assert tracker.missing(D) == [(2, 2)]  # the device still has it in its replay window
    tracker.settle(D, 2, 2)
    tracker.due(10)
    assert tracker.unseeded() == {} and D not in tracker.due(10)
    tracker.seen(D, 5, 20.0)  # a late message of epoch 0: a stream of its own again
    assert tracker.unseeded() == {D: 5}


def test_an_older_epoch_without_gaps_is_forgotten_when_a_newer_one_starts():
    tracker = _tracker(1, 2, 3)
    tracker.seen(Stream("d", 2), 1, 0.0)
    assert tracker.missing(D) == [] and tracker.unseeded() == {Stream("d", 2): 1}
    tracker.seen(D, 4, 0.0)  # epoch 0 was forgotten: seen anew, seeded from the database
    assert tracker.unseeded() == {Stream("d", 2): 1, D: 4}


def test_a_request_names_its_epoch_unless_it_is_zero():
    assert json.loads(resend_request([(2, 2)], epoch=3)) == {"resend": [[2, 2]], "epoch": 3}
    assert json.loads(resend_request([(2, 2)], epoch=0)) == {"resend": [[2, 2]]}


def test_the_request_payload_is_json_with_inclusive_ranges():
    assert json.loads(resend_request([(3, 4), (9, 9)])) == {"resend": [[3, 4], [9, 9]]}


@given(st.lists(st.integers(1, 60), min_size=1, max_size=80))
def test_missing_is_exactly_the_numbers_not_seen_between_the_first_and_the_highest(seqs):
    tracker = GapTracker(GapConfig(max_ranges=1000))
    for seq in seqs:
        tracker.seen(D, seq, 0.0)
    tracker.seed(D, min(seqs) - 1, 0.0)
    missing = {s for lo, hi in tracker.missing(D) for s in range(lo, hi + 1)}
    assert missing == set(range(min(seqs), max(seqs) + 1)) - set(seqs)
    ranges = tracker.missing(D)
    assert ranges == sorted(ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))  # disjoint, apart
