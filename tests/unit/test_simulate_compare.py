"""The simulator's report counts lost and duplicated samples one by one, from what was sent
as storage would hold it: a loss and a duplicate on one device do not cancel out."""

from collections import Counter

from healthiot.simulate import DeviceReport, lost_and_dup, sent_samples
from vitals.catalogue import metric
from vitals.senml import encode_json

T = 1_700_000_000.0


def _report(**counts: int) -> DeviceReport:
    # Six samples acknowledged, six stored by the ledger's counts.
    fields = {"sent": 3, "acked": 3, "refused": 0, "resent": 0, "buffered": 0, "samples": 6,
              "stored_messages": 3, "stored": 6, "rejected": 0, **counts}
    return DeviceReport("w-1", "watch", **fields)


def test_a_loss_and_a_duplicate_on_one_device_do_not_cancel_out():
    sent = Counter({("heart_rate", 1000, 70.0): 1, ("heart_rate", 2000, 71.0): 1})
    found = Counter({("heart_rate", 1000, 70.0): 2})  # 1000 stored twice, 2000 not at all
    assert lost_and_dup(sent, found) == (1, 1)


def test_a_reading_sent_twice_and_stored_twice_is_no_duplicate():
    twice = Counter({("spo2", 1000, 97.0): 2})
    assert lost_and_dup(twice, twice) == (0, 0)
    assert lost_and_dup(twice, Counter({("spo2", 1000, 97.0): 1})) == (1, 0)


def test_a_stored_value_other_than_the_one_sent_is_both_lost_and_extra():
    assert lost_and_dup(Counter({("spo2", 1000, 97.0): 1}),
                        Counter({("spo2", 1000, 96.0): 1})) == (1, 1)


def test_the_report_takes_the_sample_comparison_and_subtracts_rejected_samples():
    assert (_report().lost, _report().dup) == (0, 0)  # by counts: the two cancel out
    compared = _report(missing=2, extra=2)
    assert (compared.lost, compared.dup) == (2, 2)
    rejected = _report(missing=3, extra=0, rejected=1)  # one quarantined, two lost
    assert (rejected.lost, rejected.dup) == (2, 0)


def test_sent_samples_are_in_the_canonical_unit_and_millisecond_storage_uses():
    payload = encode_json("s-1/", [("body_weight", "[lb_av]", T + 0.1234, 154.3),
                                   ("body_fat", "%", T + 0.1234, 21.5)])
    pounds = metric("body_weight").conversion_from("[lb_av]")
    assert pounds is not None
    ms = 1_700_000_000_123  # the device's time to the nearest millisecond
    assert sent_samples([payload, payload], T) == Counter({
        ("body_weight", ms, 154.3 * pounds.scale + pounds.offset): 2,
        ("body_fat", ms, 21.5): 2})


def test_payloads_that_are_not_senml_give_no_sample_truth():
    assert sent_samples([b'{"bn": "w-1/'], T) is None
    assert sent_samples([], T) == Counter()
