"""The metrics healthiot knows: canonical UCUM unit, LOINC code, accepted units, ranges.

Ranges come in two widths: outside ``possible`` a value cannot be a measurement of a living
person and the sample is rejected (kept in quarantine); outside ``plausible`` it is stored
but flagged for review.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Conversion:
    """value_in_canonical = value * scale + offset."""

    scale: float
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    loinc: str | None  # None: LOINC has no code for it (the FHIR code is then text only)
    unit: str  # canonical UCUM unit
    display: str
    possible: tuple[float, float]
    plausible: tuple[float, float]
    conversions: Mapping[str, Conversion] = field(default_factory=dict)

    def conversion_from(self, unit: str) -> Conversion | None:
        """The conversion from ``unit`` to the canonical unit, or None if not accepted."""
        if unit == self.unit:
            return Conversion(1.0)
        return self.conversions.get(unit)



_METRICS = (
    Metric("heart_rate", "8867-4", "/min", "Heart rate", (15, 300), (30, 220),
           {"beat/min": Conversion(1.0), "1/min": Conversion(1.0)}),
    Metric("spo2", "2708-6", "%", "Oxygen saturation", (40, 100), (80, 100),
           {"/": Conversion(100.0)}),
    Metric("body_temperature", "8310-5", "Cel", "Body temperature", (25, 45), (34, 42),
           {"[degF]": Conversion(5 / 9, -32 * 5 / 9), "K": Conversion(1.0, -273.15)}),
    Metric("body_weight", "29463-7", "kg", "Body weight", (0.5, 650), (2, 300),
           {"[lb_av]": Conversion(0.45359237), "g": Conversion(0.001)}),
    Metric("body_fat", "41982-0", "%", "Body fat", (1, 80), (3, 60), {"/": Conversion(100.0)}),
    Metric("steps", "55423-8", "{steps}", "Steps", (0, 100_000), (0, 60_000),
           {"{step}": Conversion(1.0), "1": Conversion(1.0)}),
    # LOINC has no code for a single RR interval: 80404-7 is the standard deviation of RR
    # intervals (HRV, SDNN), another quantity. Text only rather than a wrong code.
    Metric("rr_interval", None, "ms", "RR interval", (150, 3000), (250, 2000),
           {"s": Conversion(1000.0)}),
    Metric("systolic_bp", "8480-6", "mm[Hg]", "Systolic blood pressure", (40, 300), (70, 250),
           {"kPa": Conversion(7.50061683)}),
    Metric("diastolic_bp", "8462-4", "mm[Hg]", "Diastolic blood pressure", (20, 200), (40, 150),
           {"kPa": Conversion(7.50061683)}),
    Metric("blood_glucose", "2339-0", "mg/dL", "Blood glucose", (10, 1500), (40, 600),
           {"mmol/L": Conversion(18.016)}),
    # Minutes asleep, reported per interval by a watch (a 1-minute epoch is worth 1).
    Metric("sleep_duration", "93832-4", "min", "Sleep duration", (0, 1440), (0, 960),
           {"h": Conversion(60.0), "s": Conversion(1 / 60)}),
    # Skin temperature at the wrist, a watch's once-a-minute reading: 61008-9 "Body surface
    # temperature" (39106-0 is a qualitative finding, not a measured value). Skin runs
    # cooler than the core and follows the room, hence the wider ranges than body_temperature.
    Metric("skin_temperature", "61008-9", "Cel", "Body surface temperature", (15, 45), (25, 40),
           {"[degF]": Conversion(5 / 9, -32 * 5 / 9), "K": Conversion(1.0, -273.15)}),
)

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _METRICS})
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)


def metric(name: str) -> Metric:
    """The metric called ``name``; raises KeyError for an unknown one."""
    return METRICS[name]
