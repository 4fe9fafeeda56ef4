"""A simulated device's numbering epochs without a broker: the counter-reset fault, and
resend requests that name an epoch."""

import time

import pytest

from firmware_sim.device import Broker, Faults, Flash, Watch


def _watch(tmp_path, **faults):
    return Watch("watch-0123456789ab", Flash(tmp_path / "w"),
                 Broker("localhost", 1, tmp_path / "ca.pem"), interval_s=5.0,
                 faults=Faults(**faults))


def _measure(watch, n):
    now = time.time()
    return [watch.measure(now - 5 * (n - i), now - 5 * (n - i) + 5) for i in range(n)]


def test_a_counter_reset_fault_numbers_from_one_in_a_new_epoch(tmp_path):
    watch = _watch(tmp_path, counter_reset_every=3)
    numbered = [(m.epoch, m.seq) for m in _measure(watch, 7)]
    assert numbered == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1)]
    assert (watch.epoch, watch.next_seq, watch.pending) == (2, 2, 7)
    watch.close()
    again = Watch(watch.device_id, watch.flash, watch.broker, interval_s=5.0)
    assert (again.epoch, again.next_seq) == (2, 2)  # the epoch survives a restart
    again.close()


def test_a_resend_request_replays_the_epoch_it_names(tmp_path):
    watch = _watch(tmp_path)
    for m in _measure(watch, 2):
        watch._outbox.acked(m.seq, m.epoch)
    watch.reset_counter()
    for m in _measure(watch, 2):
        watch._outbox.acked(m.seq, m.epoch)
    assert watch.on_request(b'{"resend": [[2, 2]], "epoch": 1}') == 1
    assert watch.on_request(b'{"resend": [[2, 2]]}') == 1  # epoch 0's seq 2: another one
    assert watch.on_request(b'{"resend": [[2, 2]], "epoch": 1}') == 0  # already queued
    assert [(m.epoch, m.seq) for m in watch._resend] == [(1, 2), (0, 2)]
    watch.close()


@pytest.mark.parametrize("junk", [b'{"resend": [[1, 1]], "epoch": -1}',
                                  b'{"resend": [[1, 1]], "epoch": "1"}',
                                  b'{"resend": [[1, 1]], "epoch": true}',
                                  b'{"resend": [[1, 1]], "epoch": 1.0}'])
def test_a_resend_request_with_a_bad_epoch_is_ignored(tmp_path, junk):
    watch = _watch(tmp_path)
    assert watch.on_request(junk) == 0
    watch.close()
