"""Physiologically plausible signals: circadian heart rate with activity, weight drift."""

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

    def sample(self, t: float) -> float:
        circadian = 6.0 * math.sin(2 * math.pi * ((t % DAY_S) / DAY_S - 0.25))
        if self.rng.random() < 0.002:  # a bout of activity starts now and then
            self._activity = self.rng.uniform(20, 60)
        self._activity *= 0.995  # and fades over minutes
        return round(self.resting + circadian + self._activity + self.rng.gauss(0, 1.5), 1)


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
