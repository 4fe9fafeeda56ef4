"""JSON shapes shared by patient and clinician routes."""

from __future__ import annotations

from typing import Any

from vitals.catalogue import METRICS
from vitals.fhir import instant
from vitals.summaries import Episode, Summary


def episode_json(ep: Episode) -> dict[str, Any]:
    return {"rule": ep.rule, "description": ep.description, "start": instant(ep.start_ms),
            "end": instant(ep.end_ms), "value": ep.value}


def summary_json(s: Summary) -> dict[str, Any]:
    m = METRICS[s.metric]
    out: dict[str, Any] = {"unit": m.unit, "loinc": m.loinc, "count": s.count,
                           "flagged": s.flagged, "completeness": round(s.completeness, 4)}
    if s.count:
        assert s.latest_ms is not None
        out.update({"latest": {"t": instant(s.latest_ms), "value": s.latest},
                    "min": s.minimum, "max": s.maximum, "mean": s.mean, "median": s.median,
                    "percentiles": {f"p{p}": v for p, v in s.percentiles.items()},
                    "trend_per_day": s.trend_per_day})
    if s.wear_minutes is not None:
        out["wear_minutes"] = s.wear_minutes
        out["wear_minutes_by_day"] = {d.isoformat(): m for d, m in
                                      sorted(s.wear_minutes_by_day.items())}
    out["episodes"] = [episode_json(e) for e in s.episodes]
    return out
