"""A patient's local day: grouping UTC samples by the calendar day of the zone in force.

Stored times stay UTC; only the grouping is local. A patient's zone has a history (they
travel, they move): each sample takes the zone in force at its instant, so a past day keeps
its figures when the zone changes later. DST days last 23 or 25 hours; half-hour zones
(Asia/Kolkata) shift every boundary by 30 minutes.

Offsets are looked up once per distinct quarter of an hour, not per sample: zone transitions
fall on quarter hours of UTC in every current zone, and a year of 1 Hz samples then costs
about 35,000 lookups instead of 31 million.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
import numpy.typing as npt

DAY_MS = 86_400_000
QUARTER_MS = 900_000
EPOCH = dt.date(1970, 1, 1)
DEFAULT_ZONE = "Europe/Paris"


@dataclass(frozen=True, slots=True)
class ZoneSpan:
    effective_from_ms: int  # the zone applies from this instant (UTC ms) on
    zone: str


def validate_zone(name: str) -> str:
    """``name`` when it is an IANA zone this system knows; ValueError otherwise."""
    if name not in available_timezones():
        raise ValueError(f"{name!r} is not an IANA time zone name")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone name") from None
    return name


def _offsets_ms(t_ms: npt.NDArray[np.int64], zone: ZoneInfo) -> npt.NDArray[np.int64]:
    quarters, inverse = np.unique(t_ms // QUARTER_MS, return_inverse=True)
    per_quarter = np.array(
        [int(dt.datetime.fromtimestamp(int(q) * 900, zone).utcoffset()  # type: ignore[union-attr]
             .total_seconds() * 1000) for q in quarters], dtype=np.int64)
    return per_quarter[inverse] if len(t_ms) else np.zeros(0, np.int64)


def zone_at(history: Sequence[ZoneSpan], t_ms: int) -> str:
    """The zone in force at ``t_ms`` (the earliest known zone before the history starts)."""
    zone = history[0].zone if history else DEFAULT_ZONE
    for span in history:
        if span.effective_from_ms <= t_ms:
            zone = span.zone
    return zone


def local_days(t_ms: npt.NDArray[np.int64], history: Sequence[ZoneSpan],
               shift_ms: int = 0) -> npt.NDArray[np.int64]:
    """The local calendar day (days since 1970-01-01) of each sample, under the zone in
    force at its instant. ``shift_ms`` moves the day boundary: +12 h makes "nights" that run
    from noon to noon and belong to the day they end on."""
    days = np.empty(len(t_ms), np.int64)
    spans = list(history) or [ZoneSpan(-(2**62), DEFAULT_ZONE)]
    edges = [s.effective_from_ms for s in spans[1:]]
    which = np.searchsorted(np.asarray(edges, np.int64), t_ms, side="right")
    for i, span in enumerate(spans):
        mask = which == i
        if mask.any():
            local = t_ms[mask] + _offsets_ms(t_ms[mask], ZoneInfo(span.zone)) + shift_ms
            days[mask] = local // DAY_MS
    return days


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_of(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=int(number))


def day_bounds(day: dt.date, zone: str, shift_ms: int = 0) -> tuple[int, int]:
    """[start, end) of a local calendar day in UTC ms: 23 h or 25 h long at DST changes.
    ``shift_ms`` as in :func:`local_days` (+12 h: from noon the day before to noon)."""
    tz = ZoneInfo(zone)
    # Wall-clock arithmetic on naive times, then the zone: the start of a "night" is noon
    # on the clock, whatever DST did overnight. A midnight that does not exist (a gap)
    # maps, with fold=0, to the instant the clocks jumped: the day's first instant.
    wall = dt.datetime.combine(day, dt.time()) - dt.timedelta(milliseconds=shift_ms)
    start = wall.replace(tzinfo=tz)
    end = (wall + dt.timedelta(days=1)).replace(tzinfo=tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def day_pieces(history: Sequence[ZoneSpan], day: dt.date,
               shift_ms: int = 0) -> list[tuple[int, int]]:
    """The UTC [start, end) pieces in which :func:`local_days` says ``day``: one piece
    unless the zone changed that day. A flight west lengthens the day (Paris to Montreal:
    30 h); flying east shortens it; a zone change that turns the clock back to the day
    before splits a day in two pieces."""
    spans = list(history) or [ZoneSpan(-(2**62), DEFAULT_ZONE)]
    pieces = []
    for i, span in enumerate(spans):
        # The first zone also covers the time before the history starts (see local_days).
        lo = span.effective_from_ms if i else -(2**62)
        hi = spans[i + 1].effective_from_ms if i + 1 < len(spans) else 2**62
        start, end = day_bounds(day, span.zone, shift_ms)
        a, b = max(lo, start), min(hi, end)
        if a < b:
            pieces.append((a, b))
    return pieces


def day_hours(history: Sequence[ZoneSpan], day: dt.date, shift_ms: int = 0) -> float:
    """How long ``day`` lasted where the patient was: 24, 23 or 25 at DST changes, other
    lengths on the day of a zone change."""
    return sum(b - a for a, b in day_pieces(history, day, shift_ms)) / 3_600_000


def days_touched(history: Sequence[ZoneSpan], start_ms: int, end_ms: int,
                 shift_ms: int = 0) -> list[dt.date]:
    """Every local day with an instant in [start_ms, end_ms), in order."""
    if end_ms <= start_ms:
        return []
    # Local days move forward with time except where a zone change turns the clock back,
    # so the first and last instants plus both sides of each change bound them all.
    edges = [start_ms, end_ms - 1]
    for span in history:
        if start_ms < span.effective_from_ms < end_ms:
            edges += [span.effective_from_ms - 1, span.effective_from_ms]
    numbers = local_days(np.asarray(edges, np.int64), history, shift_ms)
    return [day_of(n) for n in range(int(numbers.min()), int(numbers.max()) + 1)]
