"""The device models' readings: catalogue names and units, values the normaliser accepts
as plausible, and the physiology each model claims (sleep, meals, RR following the pulse)."""

import itertools
import math
import random
import statistics
import time

import numpy as np
import pytest

from firmware_sim.device import Broker, Flash
from firmware_sim.models import (
    MODELS,
    BpCuff,
    Glucometer,
    PulseOximeter,
    Scale,
    Thermometer,
    Watch,
    whole_seconds,
)
from firmware_sim.signals import Glucose, Sleep
from vitals.catalogue import METRIC_NAMES, METRICS
from vitals.normalise import Flag, Reject, normalise
from vitals.senml import decode_json

NIGHT = 1_767_310_000.0 - (1_767_310_000 % 86_400) + 2 * 3600  # 02:00 UTC (03:00 at +1)
NOON = NIGHT + 10 * 3600


def _device(cls, tmp_path, **kwargs):
    name = f"{cls.model.replace('_', '')}-{random.getrandbits(32):08x}"
    return cls(name, Flash(tmp_path / name), Broker("localhost", 1, tmp_path / "ca.pem"),
               interval_s=10.0, rng=random.Random(7), **kwargs)


VARIANTS = [(Watch, {}), (Scale, {}), (Scale, {"pounds": True}), (BpCuff, {}),
            (BpCuff, {"kpa": True}), (Thermometer, {}), (Thermometer, {"fahrenheit": True}),
            (Glucometer, {}), (Glucometer, {"mmol": True}), (PulseOximeter, {})]


@pytest.mark.parametrize(("cls", "kwargs"), VARIANTS,
                         ids=[f"{c.model}-{'-'.join(k) or 'default'}" for c, k in VARIANTS])
def test_every_model_sends_catalogue_metrics_the_normaliser_accepts_as_plausible(
        cls, kwargs, tmp_path):
    device = _device(cls, tmp_path, **kwargs)
    now = time.time()
    for start in range(0, 3600, 60):  # an hour of readings, a minute per message
        message = device.measure(now - 3600 + start, now - 3600 + start + 60)
        assert message is not None
    packs = [decode_json(m.payload, received_at=now) for m in device._outbox]
    for pack in packs:
        assert all(name in METRIC_NAMES for name in pack.metrics)
        for name, unit in zip(pack.metrics, pack.units, strict=True):
            assert METRICS[name].conversion_from(unit) is not None, (name, unit)
    norm = normalise(packs, [now] * len(packs))
    assert len(norm) > 0
    assert np.all(norm.reject == Reject.ACCEPTED)
    flagged = np.count_nonzero(norm.flags & Flag.IMPLAUSIBLE)
    assert flagged <= len(norm) * 0.01  # healthy wearers: an odd reading at most
    device.close()


@pytest.mark.parametrize("start", [NOON, NOON + 0.5])
def test_back_to_back_windows_measure_every_second_once(tmp_path, start):
    """A watch measuring [a, a + 10) then [a + 10, a + 20) sends each second once, including
    a window's first second when it starts on a whole second (once it was skipped)."""
    watch = _device(Watch, tmp_path)
    windows = [(start + 10 * k, start + 10 * (k + 1)) for k in range(12)]
    beats = [t for a, b in windows for m, _, t, _ in watch.readings(a, b) if m == "heart_rate"]
    expected = whole_seconds(start, start + 120)
    assert beats == expected
    assert len(expected) == 120 and expected[0] == math.ceil(start)
    assert sum(1 for a, b in windows for m, *_ in watch.readings(a, b) if m == "spo2") == 2
    watch.close()


def test_the_registry_knows_every_simulated_model():
    from devices.identity import MODELS as REGISTRY_MODELS
    assert set(MODELS) == set(REGISTRY_MODELS)


def test_a_watch_at_night_records_sleep_and_no_steps_and_a_lower_pulse(tmp_path):
    watch = _device(Watch, tmp_path, utc_offset_h=1.0)
    watch.sleep = Sleep(23.0, 7.0, 1.0)
    night = watch.readings(NIGHT, NIGHT + 600)
    day = watch.readings(NOON, NOON + 600)

    def values(records, metric):
        return [v for m, _, _, v in records if m == metric]

    # Seconds NIGHT .. NIGHT+599 (the one at NIGHT+600 belongs to the next period): ten
    # minute boundaries, so ten sleep epochs and ten SpO2 readings.
    assert values(night, "sleep_duration") == [1.0] * 10
    assert values(day, "sleep_duration") == []
    assert values(night, "steps") == [0.0]
    assert len(values(night, "spo2")) == len(values(day, "spo2")) == 10
    assert statistics.mean(values(night, "heart_rate")) < statistics.mean(
        values(day, "heart_rate"))
    assert len(values(day, "heart_rate")) == 600


def test_rr_intervals_follow_the_pulse_one_minute_in_five(tmp_path):
    watch = _device(Watch, tmp_path)
    records = watch.readings(NOON, NOON + 300)
    rr = [(t, v) for m, _, t, v in records if m == "rr_interval"]
    assert all((t - NOON) % 300 < 61 for t, _ in rr)  # only in the first minute
    hr = statistics.mean(v for m, _, t, v in records if m == "heart_rate" and t < NOON + 60)
    assert 55 < len(rr) < 130
    assert abs(60_000 / statistics.mean(v for _, v in rr) - hr) < hr * 0.1
    times = [t for t, _ in rr]
    assert times == sorted(times) and len(set(times)) == len(times)
    gaps = [round((b - a) * 1000, 1) for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([v for _, v in rr][1:], abs=1.5)  # RR = time between beats
    later = watch.readings(NOON + 300, NOON + 310)  # the next minute-in-five starts afresh
    assert [m for m, *_ in later].count("rr_interval") >= 8


def test_glucose_rises_after_a_meal_and_returns_to_fasting():
    g = Glucose(fasting=90, meals_h=(12.0,), utc_offset_h=0.0, rng=random.Random(1))
    midday = NOON - (NOON % 86_400) + 12 * 3600
    before, peak, after = (statistics.mean(g.measure(midday + dt) for _ in range(50))
                           for dt in (-1800, 2700, 4 * 3600))
    assert abs(before - 90) < 5 and peak > 130 and abs(after - 90) < 5


def test_units_are_converted_by_the_device_as_real_ones_do(tmp_path):
    kpa = _device(BpCuff, tmp_path, kpa=True).readings(NOON, NOON + 1)
    mmhg = _device(BpCuff, tmp_path).readings(NOON, NOON + 1)  # same seed, same person
    assert kpa[0][1] == "kPa" and mmhg[0][1] == "mm[Hg]"
    assert kpa[0][3] * 7.50061683 == pytest.approx(mmhg[0][3], abs=0.1)
    lb = _device(Scale, tmp_path, pounds=True).readings(NOON, NOON + 1)
    kg = _device(Scale, tmp_path).readings(NOON, NOON + 1)
    assert lb[0][1] == "[lb_av]" and lb[0][3] * 0.45359237 == pytest.approx(kg[0][3], abs=0.1)
