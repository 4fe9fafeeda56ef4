"""The device models: a watch, a scale, a blood-pressure cuff, a thermometer, a glucometer
and a pulse oximeter, each reporting in the units such devices use (lb, kPa, degF, mmol/L
on some), with metric names and units from the vital-sign catalogue."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware_sim.device import Ledger, SimulatedDevice
from firmware_sim.signals import (
    MGDL_PER_MMOLL,
    MMHG_PER_KPA,
    Beats,
    BloodPressure,
    Glucose,
    HeartRate,
    SkinTemperature,
    Sleep,
    Spo2,
    Temperature,
    Weight,
    to_fahrenheit,
    to_pounds,
)

Record = tuple[str, str, float, float]  # (metric, unit, Unix time, value)
HRV_EVERY_S = 300  # RR intervals are recorded for the first minute of every five
HRV_FOR_S = 60


def whole_seconds(start: float, end: float) -> list[float]:
    """The whole seconds in [start, end): back-to-back windows measure every second once,
    including one that a window starts on exactly."""
    first = math.ceil(start)
    return [float(t) for t in range(first, math.ceil(end))]


class Watch(SimulatedDevice):
    """Heart rate at 1 Hz, sent in batches; steps per batch; SpO2, skin temperature and,
    while asleep, a sleep epoch once a minute; beat-to-beat (RR) intervals one minute in
    five."""

    model = "watch"

    def __init__(self, *args: object, resting_hr: float = 62.0, utc_offset_h: float = 1.0,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.heart = HeartRate(resting_hr, self.rng)
        self.sleep = Sleep(bedtime_h=self.rng.uniform(22, 24.5) % 24,
                           wake_h=self.rng.uniform(6, 8), utc_offset_h=utc_offset_h)
        self.spo2 = Spo2(rng=self.rng)
        self.beats = Beats(self.rng)
        self.skin = SkinTemperature(rng=self.rng)

    def readings(self, start: float, end: float) -> list[Record]:
        seconds = whole_seconds(start, end)
        if not seconds:
            return []
        asleep = self.sleep.asleep(seconds[-1])
        records: list[Record] = []
        for t in seconds:
            bpm = self.heart.sample(t, asleep)
            records.append(("heart_rate", "/min", t, bpm))
            if t % 60 == 0:
                records.append(("spo2", "%", t, self.spo2.sample(asleep)))
                if asleep:
                    records.append(("sleep_duration", "min", t, 1.0))
                records.append(("skin_temperature", "Cel", t, self.skin.sample(t, asleep)))
            if t % HRV_EVERY_S < HRV_FOR_S:
                records.extend(("rr_interval", "ms", beat, rr)
                               for beat, rr in self.beats.between(t, t + 1, bpm))
        steps = 0 if asleep else self.rng.randint(0, 12) * len(seconds) // 5
        records.append(("steps", "{steps}", seconds[-1], float(steps)))
        return records


@dataclass
class ScaleLedger(Ledger):
    """A scale's ledger, with the ground truth of who stepped on it: (Unix time of the
    weighing, index of the person in ``people``, the weight shown in kg), one per weighing
    of a scale made with ``people`` (a household's; one made without, as in `make run`'s
    demo, records none: its weighings are all its owner's, and the list would grow for as
    long as it runs)."""

    weighed: list[tuple[float, int, float]] = field(default_factory=list)


class Scale(SimulatedDevice):
    """Weight and body fat, one weighing per interval; in kg, or in lb when ``pounds``.

    ``people`` (weights in kg) makes it a household's shared scale: each weighing is of one
    of them, picked at random, and ``ledger.weighed`` records who, so that a test can check
    what the backend attributed to whom."""

    model = "scale"
    MIN_KG, MAX_KG = 2.0, 300.0  # babies held aside, to the heaviest plausible adult

    def __init__(self, *args: object, kg: float = 72.0, pounds: bool = False,
                 people: Sequence[float] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if people is not None and not people:
            raise ValueError("a shared scale needs at least one person")
        for weight in people or (kg,):
            if not self.MIN_KG <= weight <= self.MAX_KG:
                raise ValueError(f"{weight} kg is not a plausible person's weight")
        self.ledger: ScaleLedger = ScaleLedger()
        if people is None:
            self.people = [Weight(kg, rng=self.rng)]  # one person: the sequence as before
        else:
            self.people = [Weight(w, body_fat=self.rng.uniform(14.0, 34.0), rng=self.rng)
                           for w in people]
        self.person = self.people[0]
        self.pounds = pounds
        self.shared = people is not None

    def readings(self, start: float, end: float) -> list[Record]:
        who = self.rng.randrange(len(self.people)) if len(self.people) > 1 else 0
        kg, fat = self.people[who].measure()
        t = round(end, 3)
        if self.shared:
            self.ledger.weighed.append((t, who, kg))
        weight = ("body_weight", "[lb_av]", t, to_pounds(kg)) if self.pounds \
            else ("body_weight", "kg", t, kg)
        return [weight, ("body_fat", "%", t, fat)]


class BpCuff(SimulatedDevice):
    """Systolic and diastolic pressure and the pulse, one reading per interval; in mmHg, or
    in kPa when ``kpa``."""

    model = "bp_cuff"

    def __init__(self, *args: object, systolic: float = 122.0, kpa: bool = False,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pressure = BloodPressure(systolic, systolic * 0.64, rng=self.rng)
        self.heart = HeartRate(self.rng.uniform(58, 80), self.rng)
        self.kpa = kpa

    def readings(self, start: float, end: float) -> list[Record]:
        t = round(end, 3)
        systolic, diastolic = self.pressure.measure(t)
        if self.kpa:
            return [("systolic_bp", "kPa", t, round(systolic / MMHG_PER_KPA, 2)),
                    ("diastolic_bp", "kPa", t, round(diastolic / MMHG_PER_KPA, 2)),
                    ("heart_rate", "/min", t, round(self.heart.sample(t)))]
        return [("systolic_bp", "mm[Hg]", t, systolic), ("diastolic_bp", "mm[Hg]", t, diastolic),
                ("heart_rate", "/min", t, round(self.heart.sample(t)))]


class Thermometer(SimulatedDevice):
    """Body temperature, one reading per interval; in degC, or in degF when ``fahrenheit``."""

    model = "thermometer"

    def __init__(self, *args: object, fahrenheit: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.body = Temperature(self.rng.uniform(36.5, 37.0), rng=self.rng)
        self.fahrenheit = fahrenheit

    def readings(self, start: float, end: float) -> list[Record]:
        t = round(end, 3)
        celsius = self.body.measure(t)
        if self.fahrenheit:
            return [("body_temperature", "[degF]", t, to_fahrenheit(celsius))]
        return [("body_temperature", "Cel", t, round(celsius, 1))]


class Glucometer(SimulatedDevice):
    """Capillary glucose, one strip per interval; in mg/dL, or mmol/L when ``mmol``."""

    model = "glucometer"

    def __init__(self, *args: object, mmol: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.glucose = Glucose(self.rng.uniform(82, 105), rng=self.rng)
        self.mmol = mmol

    def readings(self, start: float, end: float) -> list[Record]:
        t = round(end, 3)
        mg_dl = self.glucose.measure(t)
        if self.mmol:
            return [("blood_glucose", "mmol/L", t, round(mg_dl / MGDL_PER_MMOLL, 1))]
        return [("blood_glucose", "mg/dL", t, mg_dl)]


class PulseOximeter(SimulatedDevice):
    """A fingertip oximeter: SpO2 and pulse once a second while it is on, sent per interval."""

    model = "pulse_oximeter"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.spo2 = Spo2(self.rng.uniform(95.5, 98.5), self.rng)
        self.heart = HeartRate(self.rng.uniform(58, 80), self.rng)

    def readings(self, start: float, end: float) -> list[Record]:
        seconds = whole_seconds(start, end)
        records: list[Record] = []
        for t in seconds:
            records.append(("spo2", "%", t, self.spo2.sample(False)))
            records.append(("heart_rate", "/min", t, round(self.heart.sample(t))))
        return records


MODELS: dict[str, type[SimulatedDevice]] = {
    cls.model: cls for cls in (Watch, Scale, BpCuff, Thermometer, Glucometer, PulseOximeter)}
