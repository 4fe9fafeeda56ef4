"""Consent categories: the groups of metrics a patient can share in one choice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from vitals.catalogue import METRICS

CATEGORIES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "cardiac": ("heart_rate", "rr_interval", "systolic_bp", "diastolic_bp"),
    "respiratory": ("spo2",),
    "body": ("body_weight", "body_fat", "body_temperature", "skin_temperature"),
    "activity": ("steps",),
    "sleep": ("sleep_duration",),
    "metabolic": ("blood_glucose",),
    "vital-signs": ("heart_rate", "spo2", "body_temperature", "systolic_bp", "diastolic_bp",
                    "body_weight"),
})


def expand(metrics: Iterable[str], categories: Iterable[str]) -> tuple[str, ...]:
    """The metric names of ``metrics`` plus those of ``categories``, sorted, each once;
    raises ValueError naming what is unknown."""
    metrics, categories = list(metrics), list(categories)
    unknown = [m for m in metrics if m not in METRICS]
    unknown += [f"category {c}" for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown: {', '.join(unknown)}")
    chosen = set(metrics)
    for category in categories:
        chosen.update(CATEGORIES[category])
    return tuple(sorted(chosen))
