"""Sensor artefacts on demand: heart-rate spikes, SpO2 dips and dropouts.

What a real wrist sensor does now and then: an optical pulse reading miscounts (a single
absurd value, or 0 when contact is lost for a moment), the oximeter's light path moves (a
short dip no lung could make) and the sensor loses the skin (no samples at all for a while:
a gap, never zeros). Each is injected at roughly its interval (0.5-1.5 times it, drawn from
the device's generator, so a seeded device is repeatable) and reported back, so that the
device's ledger holds the ground truth a test compares with what the backend stored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Record = tuple[str, str, float, float]  # (metric, unit, Unix time, value)

SPIKE_ZERO_SHARE = 0.2  # spikes that are a 0 (contact lost) rather than a racing count
SPIKE_BPM = (250.0, 295.0)  # above the plausible 220 /min, inside the possible 300
DIP_S = 3.0  # a motion artefact lasts a few seconds (a real desaturation 10 s or more)
DIP_PERCENT = (60.0, 75.0)  # below the plausible 80 %, inside the possible 40


@dataclass
class Injected:
    """What one call injected, with the times as sent."""

    spikes: list[tuple[float, float]] = field(default_factory=list)  # (time, value sent)
    dips: list[tuple[float, float]] = field(default_factory=list)  # (time, value sent)
    not_taken: list[tuple[str, float]] = field(default_factory=list)  # (metric, time)


@dataclass
class Schedule:
    """When each kind of artefact is next due (device time), and the dropout under way."""

    spike_at: float | None = None
    dip_at: float | None = None
    dropout_at: float | None = None
    dropouts: list[tuple[float, float]] = field(default_factory=list)  # [from, to) windows


def _next(due: float | None, first: float, every_s: float, rng: random.Random) -> float:
    """The first due time falls anywhere in the first interval after the device's first
    reading (a fleet's devices are out of phase); each later one 0.5-1.5 intervals after
    the last."""
    if due is None:
        return first + every_s * rng.uniform(0.0, 1.0)
    return due + every_s * rng.uniform(0.5, 1.5)


def inject(records: list[Record], rng: random.Random, schedule: Schedule, *,
           hr_spike_every_s: float, spo2_dip_every_s: float, dropout_every_s: float,
           dropout_s: float) -> tuple[list[Record], Injected]:
    """``records`` (time-ordered per metric) with the artefacts due in them; an interval of
    0 turns that kind off. Dropouts are applied first: a spike or dip falls on a sample
    that was really taken."""
    out = Injected()
    if not records:
        return records, out
    first, last = min(r[2] for r in records), max(r[2] for r in records)
    if dropout_every_s > 0 and dropout_s > 0:
        if schedule.dropout_at is None:
            schedule.dropout_at = _next(None, first, dropout_every_s, rng)
        while schedule.dropout_at <= last:
            start = schedule.dropout_at
            schedule.dropouts.append((start, start + dropout_s))
            schedule.dropout_at = _next(start + dropout_s, first, dropout_every_s, rng)
        kept = []
        for record in records:
            if any(a <= record[2] < b for a, b in schedule.dropouts):
                out.not_taken.append((record[0], record[2]))
            else:
                kept.append(record)
        records = kept
        schedule.dropouts = [(a, b) for a, b in schedule.dropouts if b > last]
    if hr_spike_every_s > 0:
        records = _spikes(records, rng, schedule, first, hr_spike_every_s, out)
    if spo2_dip_every_s > 0:
        records = _dips(records, rng, schedule, first, spo2_dip_every_s, out)
    return records, out


def _spikes(records: list[Record], rng: random.Random, schedule: Schedule, first: float,
            every_s: float, out: Injected) -> list[Record]:
    """One heart-rate sample per due time replaced by an absurd value. Not the first or
    the last of the message, so that it has neighbours on both sides to be judged by."""
    beats = [i for i, r in enumerate(records) if r[0] == "heart_rate"]
    if schedule.spike_at is None:
        schedule.spike_at = _next(None, first, every_s, rng)
    records = list(records)
    for i in beats[1:-1]:
        metric, unit, t, _ = records[i]
        if t < schedule.spike_at:
            continue
        value = 0.0 if rng.random() < SPIKE_ZERO_SHARE else round(rng.uniform(*SPIKE_BPM))
        records[i] = (metric, unit, t, value)
        out.spikes.append((t, value))
        schedule.spike_at = _next(t, first, every_s, rng)
    return records


def _dips(records: list[Record], rng: random.Random, schedule: Schedule, first: float,
          every_s: float, out: Injected) -> list[Record]:
    """At each due time, the SpO2 samples of the next DIP_S seconds drop to an implausible
    value: one sample on a watch (a reading a minute), up to three on a 1 Hz oximeter."""
    if schedule.dip_at is None:
        schedule.dip_at = _next(None, first, every_s, rng)
    records = list(records)
    dip_until: float | None = None
    depth = 0.0
    for i, (metric, unit, t, _) in enumerate(records):
        if metric != "spo2":
            continue
        if dip_until is not None and t >= dip_until:
            dip_until = None
        if dip_until is None and t >= schedule.dip_at:
            dip_until = t + DIP_S
            depth = round(rng.uniform(*DIP_PERCENT))
            schedule.dip_at = _next(t, first, every_s, rng)
        if dip_until is not None:
            value = depth / 100.0 if unit == "/" else depth
            records[i] = (metric, unit, t, value)
            out.dips.append((t, value))
    return records
