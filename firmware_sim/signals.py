"""Physiologically plausible signals: circadian rhythms, activity, sleep, meals, noise.

Each signal draws from the ``random.Random`` it is given, so a seeded device is repeatable.
Values are in the unit a device of that kind commonly reports; conversions are below.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY_S = 86_400.0


@dataclass
class HeartRate:
    """1 Hz heart rate: resting level, a circadian swing, activity bouts, sensor noise."""

    resting: float = 62.0
    rng: random.Random = field(default_factory=random.Random)
    _activity: float = 0.0

    def sample(self, t: float, asleep: bool = False) -> float:
        circadian = 6.0 * math.sin(2 * math.pi * ((t % DAY_S) / DAY_S - 0.25))
        if not asleep and self.rng.random() < 0.002:  # a bout of activity now and then
            self._activity = self.rng.uniform(20, 60)
        self._activity *= 0.995  # and fades over minutes
        night = -7.0 if asleep else 0.0
        return round(self.resting + circadian + night + self._activity
                     + self.rng.gauss(0, 1.5), 1)


@dataclass
class Weight:
    """A person's weight: slow drift and day-to-day water noise, in kg."""

    kg: float = 72.0
    body_fat: float = 24.0
    rng: random.Random = field(default_factory=random.Random)

    def measure(self) -> tuple[float, float]:
        self.kg += self.rng.gauss(0, 0.05)
        return round(self.kg + self.rng.gauss(0, 0.3), 1), round(
            self.body_fat + self.rng.gauss(0, 0.4), 1)


def local_hour(t: float, utc_offset_h: float) -> float:
    """Hour of the wearer's day (0-24) at Unix time ``t``."""
    return ((t / 3600.0 + utc_offset_h) % 24.0 + 24.0) % 24.0


@dataclass
class Sleep:
    """A wearer who sleeps from ``bedtime_h`` to ``wake_h`` local time, every night."""

    bedtime_h: float = 23.0
    wake_h: float = 7.0
    utc_offset_h: float = 1.0

    def asleep(self, t: float) -> bool:
        h = local_hour(t, self.utc_offset_h)
        if self.bedtime_h > self.wake_h:
            return h >= self.bedtime_h or h < self.wake_h
        return self.bedtime_h <= h < self.wake_h


@dataclass
class Beats:
    """Beat-to-beat (RR) intervals that follow the heart rate, with respiratory sinus
    arrhythmia and beat noise: what HRV is computed from."""

    rng: random.Random = field(default_factory=random.Random)
    _last_beat: float | None = None

    def between(self, start: float, end: float, bpm: float) -> list[tuple[float, float]]:
        """(beat time, RR interval in ms since the previous beat) for the beats in
        [start, end). Calls for consecutive periods continue one beat sequence."""
        t = self._last_beat
        if t is None or not start - 3.0 <= t < end:
            t = start  # a new recording: its first beat counts from here
        beats = []
        while True:
            mean_ms = 60_000.0 / max(bpm, 30.0)
            rsa = 0.04 * math.sin(2 * math.pi * t / 4.0)  # breathing every ~4 s
            rr = round(mean_ms * (1 + rsa + self.rng.gauss(0, 0.02)), 1)
            beat = round(t + rr / 1000.0, 3)
            if beat >= end:
                break
            beats.append((beat, rr))
            t = beat
        self._last_beat = t
        return beats


@dataclass
class Spo2:
    """Oxygen saturation: 96-99 % awake, with short dips during sleep."""

    baseline: float = 97.5
    rng: random.Random = field(default_factory=random.Random)

    def sample(self, asleep: bool) -> float:
        value = self.baseline + self.rng.gauss(0, 0.7)
        if asleep and self.rng.random() < 0.05:
            value -= self.rng.uniform(2, 5)  # a desaturation, as in light sleep apnoea
        return round(min(100.0, value), 0)


@dataclass
class BloodPressure:
    """Systolic/diastolic in mmHg: a morning surge, a night dip, and reading noise."""

    systolic: float = 122.0
    diastolic: float = 78.0
    utc_offset_h: float = 1.0
    rng: random.Random = field(default_factory=random.Random)

    def measure(self, t: float) -> tuple[float, float]:
        h = local_hour(t, self.utc_offset_h)
        swing = 6.0 * math.sin(2 * math.pi * (h - 8.0) / 24.0 + math.pi / 2)
        sys_ = self.systolic + swing + self.rng.gauss(0, 5)
        dia = self.diastolic + 0.6 * swing + self.rng.gauss(0, 3.5)
        return round(sys_), round(min(dia, sys_ - 20))


@dataclass
class Temperature:
    """Core temperature in degrees Celsius: a circadian swing and, now and then, a fever."""

    baseline: float = 36.8
    utc_offset_h: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    _fever: float = 0.0

    def measure(self, t: float) -> float:
        h = local_hour(t, self.utc_offset_h)
        circadian = 0.3 * math.sin(2 * math.pi * (h - 11.0) / 24.0)
        if self.rng.random() < 0.01:
            self._fever = self.rng.uniform(1.0, 2.5)
        self._fever *= 0.9
        return round(self.baseline + circadian + self._fever + self.rng.gauss(0, 0.1), 2)


@dataclass
class SkinTemperature:
    """Wrist skin temperature in degrees Celsius. Opposite to the core: the skin is cooler by
    day (~32-33) and warmer in sleep (~34-35), as the body sheds heat through the extremities
    at night. Between the two it drifts over tens of minutes, not in a step."""

    day: float = 32.5
    night: float = 34.5
    rng: random.Random = field(default_factory=random.Random)
    settle_s: float = 1200.0  # time constant of the drift after falling asleep or waking
    _level: float | None = None
    _last_t: float | None = None

    def sample(self, t: float, asleep: bool) -> float:
        target = self.night if asleep else self.day
        if self._level is None or self._last_t is None or t - self._last_t > DAY_S:
            self._level = target
        else:
            self._level += (target - self._level) * (1 - math.exp(-(t - self._last_t)
                                                                  / self.settle_s))
        self._last_t = t
        return round(self._level + self.rng.gauss(0, 0.15), 2)


@dataclass
class Glucose:
    """Capillary glucose in mg/dL: a fasting level and a rise after each meal."""

    fasting: float = 92.0
    meals_h: tuple[float, ...] = (8.0, 12.5, 19.5)
    utc_offset_h: float = 1.0
    rng: random.Random = field(default_factory=random.Random)

    def measure(self, t: float) -> float:
        h = local_hour(t, self.utc_offset_h)
        rise = 0.0
        for meal in self.meals_h:
            since = (h - meal) % 24.0
            if since < 3.0:  # peaks about 45 minutes after the meal, gone after 3 hours
                rise += 55.0 * (since / 0.75) * math.exp(1 - since / 0.75)
        return round(self.fasting + rise + self.rng.gauss(0, 4), 0)


MMHG_PER_KPA = 7.50061683
MGDL_PER_MMOLL = 18.016  # glucose


def to_fahrenheit(celsius: float) -> float:
    return round(celsius * 9 / 5 + 32, 1)


def to_pounds(kg: float) -> float:
    return round(kg / 0.45359237, 1)
