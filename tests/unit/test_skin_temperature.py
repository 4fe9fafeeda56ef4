"""Skin temperature, the watch's once-a-minute reading: catalogue entry, units, ranges, the
daily mean, the FHIR shape, what it is not (fed to the medical record), and a signal that
is plausible and warmer in sleep."""

from __future__ import annotations

import datetime as dt
import random
import statistics
import uuid

import numpy as np
import pytest
from fhir.resources.R4B.observation import Observation

from api.fhir_routes import SAMPLED_PERIOD_MS, observations
from api.record_feed import SPOT_METRICS, bundles_for
from api.record_models import DeviceModel, ModelCatalogue
from firmware_sim.device import Broker, Flash
from firmware_sim.models import Watch
from firmware_sim.signals import SkinTemperature, Sleep
from storage.device_info import DeviceInfo
from storage.segments import Samples
from vitals import fhir
from vitals.catalogue import METRIC_NAMES, METRICS
from vitals.categories import CATEGORIES, expand
from vitals.daily import daily
from vitals.days import ZoneSpan
from vitals.normalise import Flag, Reject, normalise, raw_values
from vitals.senml import Pack, decode_json
from vitals.summaries import CONTINUOUS, summarise

RECEIVED_AT = 1_767_312_000.0  # 2026-01-02T00:00:00Z
PATIENT = uuid.UUID("6f1c2d3e-0000-4000-8000-000000000001")
UTC = [ZoneSpan(0, "UTC")]


def _one(unit: str, value: float) -> tuple[float, int, int]:
    norm = normalise([Pack(["skin_temperature"], [unit], [RECEIVED_AT - 60], [value])],
                     [RECEIVED_AT])
    return float(norm.value[0]), int(norm.flags[0]), int(norm.reject[0])


def test_the_catalogue_knows_skin_temperature_by_loinc_61008_9_and_added_it_last() -> None:
    m = METRICS["skin_temperature"]
    assert (m.loinc, m.unit, m.possible, m.plausible) == ("61008-9", "Cel", (15, 45), (25, 40))
    assert m.loinc != "39106-0"  # the qualitative finding, not a measured temperature
    # Appended: the index of every earlier metric (stored in normalised batches) is unmoved.
    assert METRIC_NAMES[-1] == "skin_temperature"
    assert METRIC_NAMES.index("sleep_duration") == len(METRIC_NAMES) - 2


@pytest.mark.parametrize(("unit", "raw", "celsius"),
                         [("[degF]", 93.2, 34.0), ("[degF]", 89.6, 32.0), ("K", 306.65, 33.5),
                          ("Cel", 33.1, 33.1)])
def test_fahrenheit_and_kelvin_become_celsius_and_the_raw_reading_comes_back(
        unit: str, raw: float, celsius: float) -> None:
    value, flags, reject = _one(unit, raw)
    assert value == pytest.approx(celsius)
    assert (flags, reject) == (0, Reject.ACCEPTED)
    assert raw_values("skin_temperature", unit, [value]).tolist() == [raw]


@pytest.mark.parametrize(("celsius", "flags", "reject"), [
    (24.0, Flag.IMPLAUSIBLE, Reject.ACCEPTED),  # a cold wrist outdoors: stored, for review
    (41.0, Flag.IMPLAUSIBLE, Reject.ACCEPTED),
    (14.0, None, Reject.IMPOSSIBLE_VALUE),  # not a living wrist: quarantined with the reason
    (46.0, None, Reject.IMPOSSIBLE_VALUE),
    (25.0, 0, Reject.ACCEPTED), (40.0, 0, Reject.ACCEPTED)])
def test_implausible_values_are_flagged_and_impossible_ones_rejected(
        celsius: float, flags: int | None, reject: int) -> None:
    _, got_flags, got_reject = _one("Cel", celsius)
    assert got_reject == reject
    if reject == Reject.ACCEPTED:  # a rejected sample's flags are not stored anywhere
        assert got_flags == flags


def test_skin_temperature_is_shared_with_the_body_category_and_is_no_fhir_vital_sign() -> None:
    assert "skin_temperature" in CATEGORIES["body"]
    assert "skin_temperature" in expand([], ["body"])
    assert "skin_temperature" not in CATEGORIES["vital-signs"]
    assert sum("skin_temperature" in ms for ms in CATEGORIES.values()) == 1


def test_the_daily_figure_is_the_mean_of_the_day_and_flagged_samples_stay_out() -> None:
    day = dt.date(2026, 1, 2)
    start = int(RECEIVED_AT * 1000)
    t = start + np.arange(0, 24 * 60, dtype=np.int64) * 60_000  # one a minute, all day
    v = np.where(np.arange(len(t)) < 8 * 60, 34.5, 32.5)  # 8 h asleep, 16 h awake
    (fig,) = daily("skin_temperature", {"watch-1": (t, v)}, ["watch-1"], UTC, [day])
    assert fig.value == pytest.approx((8 * 34.5 + 16 * 32.5) / 24)
    assert fig.count == 24 * 60
    # Summaries count it as a worn-device stream: completeness in minutes, wear time.
    assert "skin_temperature" in CONTINUOUS
    flags = np.zeros(len(t), np.uint8)
    v_spiked = v.copy()
    v_spiked[100] = 41.0
    flags[100] = Flag.IMPLAUSIBLE
    s = summarise("skin_temperature", t, v_spiked, flags, start, start + 86_400_000, UTC)
    assert (s.count, s.flagged, s.wear_minutes) == (24 * 60 - 1, 1, 24 * 60 - 1)
    assert s.maximum == 34.5


def test_the_fhir_read_api_serves_it_hourly_as_sampled_data_with_its_loinc_code() -> None:
    assert SAMPLED_PERIOD_MS["skin_temperature"] == 60_000
    start = int(RECEIVED_AT * 1000)
    t = start + np.array([0, 60_000, 180_000, 3_600_000], dtype=np.int64)
    samples = Samples(t, np.array([33.0, 33.25, 33.5, 34.0]), np.zeros(4, np.uint8))
    found = observations(PATIENT, {"skin_temperature": samples}, "watch-1")
    assert len(found) == 2  # one Observation per UTC hour
    first = min(found, key=lambda pair: pair[0])[1]
    Observation.model_validate(first)
    assert first["code"]["coding"] == [{"system": "http://loinc.org", "code": "61008-9",
                                        "display": "Body surface temperature"}]
    # A missed minute: no value ("E" in the data).
    assert fhir.sampled_values(first["valueSampledData"]) == [33.0, 33.25, None, 33.5]
    assert first["valueSampledData"]["period"] == 60_000
    assert first["valueSampledData"]["origin"]["code"] == "Cel"
    assert "meta" not in first  # the ANS guide has no profile for it: none is claimed
    assert first["device"] == {"reference": "Device/watch-1"}


def test_it_is_not_fed_to_the_medical_record() -> None:
    """The feed sends spot readings (a thermometer's body temperature); a worn sensor's
    minute-by-minute skin temperature is not one."""
    assert "skin_temperature" not in SPOT_METRICS
    t = np.array([int(RECEIVED_AT * 1000)], np.int64)
    series = {"watch-1": {"skin_temperature": Samples(t, np.array([33.0]),
                                                      np.zeros(1, np.uint8)),
                          "body_temperature": Samples(t, np.array([36.9]),
                                                      np.zeros(1, np.uint8))}}
    models = ModelCatalogue({"watch": DeviceModel(
        "Example", "W-1", "528457", {"body_temperature": 1, "heart_rate": 0})})
    fed = bundles_for(PATIENT, fhir.person_subject("1.2.250.1.213.1.4.10", "IDPE1"),
                      "1.2.250.1.999.1", series,
                      {"watch-1": DeviceInfo("watch-1", "watch", "SN-1", None)}, models,
                      {"watch-1": "00-1B-C5-FF-FE-00-00-2A"})
    assert [metric for _, metric, _ in fed] == ["body_temperature"]


def test_the_signal_is_plausible_all_day_and_warmer_asleep_than_awake() -> None:
    skin = SkinTemperature(rng=random.Random(3))
    sleep = Sleep(23.0, 7.0, utc_offset_h=0.0)
    midnight = RECEIVED_AT  # a UTC midnight
    day, night = [], []
    for minute in range(24 * 60):
        t = midnight + 60 * minute
        asleep = sleep.asleep(t)
        value = skin.sample(t, asleep)
        low, high = METRICS["skin_temperature"].plausible
        assert low <= value <= high
        hour = minute / 60
        if 3 <= hour < 6:  # settled in sleep
            night.append(value)
        elif 10 <= hour < 20:  # settled awake
            day.append(value)
    assert 34.0 <= statistics.mean(night) <= 35.0
    assert 32.0 <= statistics.mean(day) <= 33.0
    assert statistics.mean(night) - statistics.mean(day) > 1.0


def test_the_watch_sends_it_once_a_minute(tmp_path):
    watch = Watch("watch-0123456789ab", Flash(tmp_path / "w"),
                  Broker("localhost", 1, tmp_path / "ca.pem"), interval_s=10.0,
                  rng=random.Random(5))
    message = watch.measure(RECEIVED_AT - 600, RECEIVED_AT)
    assert message is not None
    pack = decode_json(message.payload, received_at=RECEIVED_AT)
    times = [t for m, t in zip(pack.metrics, pack.times, strict=True)
             if m == "skin_temperature"]
    # The minute boundaries in [start, end): the end belongs to the next message.
    assert len(times) == 10 and all(t % 60 == 0 for t in times)
    watch.close()
