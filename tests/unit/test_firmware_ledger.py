"""A device's ledger counts what the broker acknowledged; it keeps the payloads themselves
only when a check asks for them (`healthiot simulate`), and a scale keeps who stepped on it
only when it is shared: `make run`'s demo fleet runs for days and would hold every payload
and weighing it ever made."""

import random
import time

from firmware_sim.device import Broker, Flash
from firmware_sim.models import Scale, Watch


def _acknowledge_an_hour(watch: Watch) -> int:
    start, sent = time.time() - 3600, 0
    for i in range(0, 3600, 2):  # the demo watches measure every 2 s
        message = watch.measure(start + i, start + i + 2)
        if message is not None:
            watch.ledger.acknowledged(message)
            sent += 1
    return sent


def _watch(tmp_path, name):
    return Watch(name, Flash(tmp_path / name), Broker("localhost", 1, tmp_path / "ca.pem"),
                 interval_s=2.0, rng=random.Random(3))


def test_a_device_keeps_counts_not_payloads_unless_asked(tmp_path):
    watch = _watch(tmp_path, "watch-0000demo")
    try:
        sent = _acknowledge_an_hour(watch)
        assert watch.ledger.messages == sent > 1000
        assert watch.ledger.payloads is None
    finally:
        watch.close()


def test_a_device_asked_to_record_keeps_each_acknowledged_payload(tmp_path):
    watch = _watch(tmp_path, "watch-00000sim")
    watch.ledger.payloads = []  # what healthiot simulate does
    try:
        sent = _acknowledge_an_hour(watch)
        assert len(watch.ledger.payloads) == sent
        assert all(p.startswith(b"[") for p in watch.ledger.payloads)  # SenML JSON
    finally:
        watch.close()


def test_a_one_person_scale_keeps_no_weighings_and_a_shared_one_keeps_each(tmp_path):
    mine = Scale("scale-0000demo", Flash(tmp_path / "mine"),
                 Broker("localhost", 1, tmp_path / "ca.pem"), interval_s=10.0,
                 rng=random.Random(3))
    shared = Scale("scale-00shared", Flash(tmp_path / "shared"),
                   Broker("localhost", 1, tmp_path / "ca.pem"), interval_s=10.0,
                   rng=random.Random(3), people=[62.0, 80.0])
    start = time.time() - 3600
    try:
        for i in range(0, 3600, 10):  # the demo scale weighs every 10 s
            for scale in (mine, shared):
                assert scale.measure(start + i, start + i + 10) is not None
        assert mine.ledger.weighed == []
        assert len(shared.ledger.weighed) == 360
    finally:
        mine.close()
        shared.close()
