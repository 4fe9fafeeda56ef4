"""Sensor artefacts injected on demand (Faults): heart-rate spikes, SpO2 dips, dropouts.

Each is repeatable with a seeded generator, lands in the device's ledger as ground truth,
and is what the normaliser then meets: a spike or a dip flagged (or a 0 rejected as
impossible), a dropout a gap with no invented sample."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from firmware_sim.artefacts import DIP_PERCENT, SPIKE_BPM, Schedule, inject
from firmware_sim.device import Broker, Faults, Flash
from firmware_sim.models import PulseOximeter, Watch
from vitals.catalogue import METRIC_NAMES
from vitals.normalise import Flag, Reject, normalise
from vitals.senml import decode_json

HOUR = 3600
FIXED_START = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC


def _device(cls, tmp_path, seed=11, **faults):
    name = f"{cls.model.replace('_', '')}-{random.getrandbits(48):012x}"
    return cls(name, Flash(tmp_path / name), Broker("localhost", 1, tmp_path / "ca.pem"),
               interval_s=10.0, rng=random.Random(seed), faults=Faults(**faults))


def _hour(device, start):
    """An hour of readings in 10 s messages; the decoded packs."""
    for k in range(0, HOUR, 10):
        device.measure(start + k, start + k + 10)
    return [decode_json(m.payload, received_at=start + HOUR) for m in device._outbox]


def _sent(packs):
    """What the packs say, without the device's name."""
    return [(p.metrics, p.units, p.times, p.values) for p in packs]


def _at(norm, metric, t, value):
    """The index of the one normalised sample of ``metric`` at ``t`` with ``value``."""
    (i,) = np.flatnonzero((norm.metric == METRIC_NAMES.index(metric))
                          & (norm.t_ms == round(t * 1000)) & (norm.value == value))
    return i


def _records(packs, metric):
    return {t: v for p in packs for m, t, v in zip(p.metrics, p.times, p.values, strict=True)
            if m == metric}


ARTEFACTS = {"hr_spike_every_s": 30.0, "spo2_dip_every_s": 120.0, "dropout_every_s": 60.0,
             "dropout_s": 10.0}


def test_the_same_seed_injects_the_same_artefacts(tmp_path):
    start = float(int(time.time()) - 2 * HOUR)
    a, b = (_device(Watch, tmp_path, **ARTEFACTS) for _ in range(2))
    assert _sent(_hour(a, start)) == _sent(_hour(b, start))
    assert (a.ledger.spikes, a.ledger.dips, a.ledger.not_taken) == (
        b.ledger.spikes, b.ledger.dips, b.ledger.not_taken)
    other = _device(Watch, tmp_path, seed=12, **ARTEFACTS)
    _hour(other, start)
    assert other.ledger.spikes != a.ledger.spikes
    for d in (a, b, other):
        d.close()


def test_a_watch_sends_spikes_dips_and_gaps_as_its_ledger_says(tmp_path):
    # A fixed hour: the counts below depend on where the seeded draws fall in it (with the
    # clock's hour, about one start in 500 gave 42-44 gaps).
    start = FIXED_START
    watch = _device(Watch, tmp_path, **ARTEFACTS)
    packs = _hour(watch, start)
    ledger = watch.ledger
    # Roughly at their intervals: every 30 s, 120 s and 60 s + 10 s on average.
    assert 80 <= len(ledger.spikes) <= 160
    assert 18 <= len(ledger.dips) <= 45
    assert 45 <= len({t // 70 for _, t in ledger.not_taken}) <= 65
    heart = _records(packs, "heart_rate")
    for t, value in ledger.spikes:
        assert heart[t] == value
        assert value == 0.0 or SPIKE_BPM[0] <= value <= SPIKE_BPM[1]
    assert 0.0 in {v for _, v in ledger.spikes}  # both kinds occur
    spo2 = _records(packs, "spo2")
    for t, value in ledger.dips:
        assert spo2[t] == value and DIP_PERCENT[0] <= value <= DIP_PERCENT[1]
    # Dropouts are gaps: each second is either sent or recorded as not taken, never both,
    # and nothing is sent as a 0 but the spikes.
    gone = {t for m, t in ledger.not_taken if m == "heart_rate"}
    # Messages of [a, a + 10) measure the whole seconds a ... a + 9: every second once.
    seconds = {start + k for k in range(HOUR)}
    assert not gone & set(heart)
    assert gone | set(heart) == seconds
    zeros = {t for t, v in heart.items() if v == 0.0}
    assert zeros == {t for t, v in ledger.spikes if v == 0.0}
    # The ledger's sample count is what was sent: artefacts are never counted as samples.
    assert sum(len(p) for p in packs) == sum(m.samples for m in watch._outbox)
    watch.close()


def test_the_normaliser_flags_spikes_and_dips_and_rejects_zero_beats(tmp_path):
    start = float(int(time.time()) - 2 * HOUR)
    watch = _device(Watch, tmp_path, hr_spike_every_s=20.0, spo2_dip_every_s=90.0)
    packs = _hour(watch, start)
    norm = normalise(packs, [start + HOUR] * len(packs))
    for t, value in watch.ledger.spikes:
        i = _at(norm, "heart_rate", t, value)
        if value == 0.0:
            assert norm.reject[i] == Reject.IMPOSSIBLE_VALUE
        else:
            assert norm.reject[i] == Reject.ACCEPTED
            # Neighbours one second away on both sides (no dropout here): a spike too.
            assert norm.flags[i] & Flag.IMPLAUSIBLE and norm.flags[i] & Flag.HR_SPIKE
    for t, value in watch.ledger.dips:
        i = _at(norm, "spo2", t, value)
        assert norm.reject[i] == Reject.ACCEPTED and norm.flags[i] & Flag.IMPLAUSIBLE
    # Nothing else was touched: every other sample is clean.
    artefact = {t for t, _ in watch.ledger.spikes} | {t for t, _ in watch.ledger.dips}
    others = ~np.isin(norm.t_ms, [round(t * 1000) for t in artefact])
    assert np.all(norm.reject[others] == Reject.ACCEPTED)
    assert np.count_nonzero(norm.flags[others] & Flag.IMPLAUSIBLE) <= 0.01 * others.sum()
    watch.close()


def test_an_oximeter_dip_lasts_three_samples_and_is_flagged_a_dip(tmp_path):
    start = float(int(time.time()) - 2 * HOUR)
    oximeter = _device(PulseOximeter, tmp_path, spo2_dip_every_s=60.0)
    packs = _hour(oximeter, start)
    # One device's messages normalised together, as the bridge batches them: a dip at the
    # edge of a message has its neighbour in the next one.
    norm = normalise(packs, [start + HOUR] * len(packs), sources=["oxi"] * len(packs))
    dips = oximeter.ledger.dips
    assert len(dips) >= 3 * 30
    flagged_as_dip = 0
    for t, value in dips:
        i = _at(norm, "spo2", t, value)
        assert norm.flags[i] & Flag.IMPLAUSIBLE
        flagged_as_dip += bool(norm.flags[i] & Flag.SPO2_DIP)
    assert flagged_as_dip == len(dips)
    oximeter.close()


def test_a_dropout_longer_than_a_message_sends_nothing_for_that_message(tmp_path):
    records = [("heart_rate", "/min", float(t), 60.0) for t in range(100, 110)]
    schedule = Schedule(dropout_at=95.0)
    kept, injected = inject(records, random.Random(1), schedule, hr_spike_every_s=0,
                            spo2_dip_every_s=0, dropout_every_s=600.0, dropout_s=30.0)
    assert kept == [] and [t for _, t in injected.not_taken] == list(range(100, 110))
    later = [("heart_rate", "/min", float(t), 60.0) for t in range(120, 130)]
    kept, injected = inject(later, random.Random(1), schedule, hr_spike_every_s=0,
                            spo2_dip_every_s=0, dropout_every_s=600.0, dropout_s=30.0)
    assert [r[2] for r in kept] == list(range(125, 130))  # the dropout ends at 125
    assert [t for _, t in injected.not_taken] == list(range(120, 125))


def test_a_device_without_artefacts_sends_what_it_measured(tmp_path):
    start = float(int(time.time()) - 2 * HOUR)
    plain, off = _device(Watch, tmp_path), _device(Watch, tmp_path, hr_spike_every_s=0.0)
    assert _sent(_hour(plain, start)) == _sent(_hour(off, start))
    assert (plain.ledger.spikes, plain.ledger.dips, plain.ledger.not_taken) == ([], [], [])
    plain.close()
    off.close()


@pytest.mark.parametrize("every", [0.0, -1.0])
def test_an_interval_of_zero_or_less_injects_nothing(every: float) -> None:
    records = [("heart_rate", "/min", float(t), 60.0) for t in range(100, 110)]
    kept, injected = inject(records, random.Random(1), Schedule(), hr_spike_every_s=every,
                            spo2_dip_every_s=every, dropout_every_s=every, dropout_s=5.0)
    assert kept == records and injected.spikes == injected.dips == injected.not_taken == []
