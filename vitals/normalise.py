"""Vectorised normalisation of many SenML packs at once.

numpy has a fixed cost of several microseconds per call, so the bridge concatenates every
pack of a batch and normalises the whole batch in one pass: unit conversion to the canonical
UCUM unit, device time to UTC milliseconds, the acceptance window, the plausibility ranges
of the catalogue, deduplication, artefact flags and the device clock offset. Nothing is
dropped silently: every sample leaves either accepted (with flags) or rejected with a reason
code, and the caller keeps rejected samples (in quarantine) with that reason.

The steps, in order, each working on what the previous one accepted:

1. Reject what cannot be stored: unknown metric or unit, impossible value, outside the
   acceptance window. Flag implausible values.
2. Deduplicate per (source, metric, UTC millisecond), where a source is the device (the
   caller says which packs share one; by default each pack is its own). The first sample in
   input order wins (the bridge orders a batch by device and sequence number, so the lowest
   sequence number wins). A later copy with the same value is rejected as DUPLICATE; one with
   a different value as CONFLICT, and the kept sample is flagged CONFLICT: which of the two
   is right is not knowable, so it waits for review and the other is kept in quarantine.
3. Artefact flags per (source, metric), in time order: an isolated excursion of one or a few
   samples away from both neighbours (see ARTEFACT_RULES). Only samples that have close
   neighbours on both sides in the same batch are judged.
4. Clock offset per pack: newest accepted sample time minus receive time. A device clock
   ahead of the receive time by more than CLOCK_AHEAD_FLAG_S (but inside the acceptance
   window) flags every accepted sample of that pack CLOCK_AHEAD. A clock behind cannot be
   told apart from a device that buffered its readings, so it is reported, never flagged.

Flags never change a value or a time; every flag bit means "stored, but not clean": the
summaries, rollups and exports leave flagged samples out until reviewed.

Raw values: a stored value is ``raw * scale + offset`` of the catalogue conversion from the
unit the device sent; the caller records that unit per message (see ``raw_units``), and
``raw_values`` inverts the conversion.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from itertools import chain

import numpy as np
import numpy.typing as npt

from vitals.catalogue import METRIC_NAMES, METRICS
from vitals.catalogue import metric as catalogue_metric
from vitals.senml import Pack

DEFAULT_PAST_WINDOW_S = 30 * 24 * 3600.0  # older readings are replays gone wrong
DEFAULT_FUTURE_WINDOW_S = 5 * 60.0  # a device clock a little ahead is normal; more is not
_T_LIMIT_S = 9e15  # seconds whose milliseconds still fit in an int64


class Flag(IntFlag):
    """Quality flags stored with each accepted sample (a uint8: eight bits in all)."""

    NONE = 0
    IMPLAUSIBLE = 1  # outside the plausible range, inside the possible one
    HR_SPIKE = 2  # a heart rate jumping away from both neighbours and straight back
    SPO2_DIP = 4  # an SpO2 dip too short to be a desaturation: motion or poor perfusion
    CLOCK_AHEAD = 8  # the device clock was ahead of the receive time by over a minute
    CONFLICT = 16  # another sample of the same device, metric and time had another value


# Flags that put a sample's value in doubt: such samples are stored but wait for review,
# out of summaries, rollups and daily figures. CLOCK_AHEAD is not one of them: it doubts the
# device's clock, not the measurement, and would silence a whole device a minute fast.
DOUBTFUL = Flag.IMPLAUSIBLE | Flag.HR_SPIKE | Flag.SPO2_DIP | Flag.CONFLICT


def reliable(flags: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Which samples count in figures: those without a doubtful flag."""
    out: npt.NDArray[np.bool_] = np.bitwise_and(flags, np.uint8(DOUBTFUL)) == 0
    return out


class Reject(IntEnum):
    """Why a sample was not accepted; 0 means accepted."""

    ACCEPTED = 0
    UNKNOWN_METRIC = 1
    UNKNOWN_UNIT = 2
    IMPOSSIBLE_VALUE = 3
    OUTSIDE_TIME_WINDOW = 4
    DUPLICATE = 5  # the same device, metric, time and value was already accepted
    CONFLICT = 6  # the same device, metric and time was already accepted with another value


# A device clock more than this ahead of the receive time is wrong, not jitter: clocks set
# by NTP or by the paired phone agree within a second or two. (Above the acceptance window's
# 5 minutes the samples are rejected instead.)
CLOCK_AHEAD_FLAG_S = 60.0


@dataclass(frozen=True, slots=True)
class ArtefactRule:
    """An isolated excursion: a run of at most ``max_run`` consecutive samples that lies
    beyond ``threshold`` (canonical unit) from both the sample before and the sample after
    the run, in the direction(s) given, every step between them at most ``max_gap_s``."""

    metric: str
    flag: Flag
    threshold: float
    max_run: int
    max_gap_s: float
    up: bool
    down: bool


ARTEFACT_RULES = (
    # Heart rate: breathing moves it 10-15 /min (sinus arrhythmia) and exercise raises it
    # over tens of seconds; 30 /min away and straight back within 2 s is a counting error
    # (a missed or doubled beat) or motion, in either direction.
    ArtefactRule("heart_rate", Flag.HR_SPIKE, threshold=30.0, max_run=2, max_gap_s=5.0,
                 up=True, down=True),
    # SpO2: a real desaturation lasts 10 s or more (the scoring rule for apnoea events) and
    # follows the circulation delay; 4 points down for at most 3 s and back up is the probe
    # moving or losing perfusion. None of our devices reports signal quality; one that does
    # would gate this rule with it.
    ArtefactRule("spo2", Flag.SPO2_DIP, threshold=4.0, max_run=3, max_gap_s=5.0,
                 up=False, down=True),
)


@dataclass(frozen=True, slots=True)
class Window:
    """The acceptance window for sample times, relative to the receive time."""

    past_s: float = DEFAULT_PAST_WINDOW_S
    future_s: float = DEFAULT_FUTURE_WINDOW_S


@dataclass(frozen=True, slots=True)
class Normalised:
    """Samples of a batch in columns; ``pack`` says which input pack each came from.

    ``clock_offset_s`` has one entry per pack: its newest accepted sample time minus its
    receive time (NaN when it has no accepted sample). Positive means the device clock is
    ahead by at least that much; negative is a clock behind or a delayed delivery.
    """

    pack: npt.NDArray[np.int32]
    metric: npt.NDArray[np.int16]  # index into METRIC_NAMES, -1 when unknown
    t_ms: npt.NDArray[np.int64]  # UTC milliseconds, device clock
    value: npt.NDArray[np.float64]  # canonical unit
    flags: npt.NDArray[np.uint8]
    reject: npt.NDArray[np.uint8]
    clock_offset_s: npt.NDArray[np.float64]
    # Per pack: its oldest and newest accepted sample time, UTC ms (device clock); the
    # smallest int64 when it has none.
    first_ms: npt.NDArray[np.int64]
    last_ms: npt.NDArray[np.int64]
    # Per pack that has any: {metric: [units]} its accepted samples were converted from.
    # What the caller must record for ``raw_values`` to give back what the device sent.
    raw_units: dict[int, dict[str, list[str]]]

    def __len__(self) -> int:
        return len(self.value)


_METRIC_INDEX = {name: i for i, name in enumerate(METRIC_NAMES)}
_RULES = tuple((np.int16(_METRIC_INDEX[r.metric]), r) for r in ARTEFACT_RULES)


def normalise(packs: Sequence[Pack], received_at: Sequence[float],
              window: Window = Window(),
              sources: Sequence[Hashable] | None = None) -> Normalised:
    """Normalise ``packs`` (received at ``received_at`` epoch seconds) in one vectorised pass.

    ``sources`` names the device of each pack: packs of one source are deduplicated and
    checked for artefacts together. Without it each pack is its own source, and a batch
    normalises exactly as its packs do one by one; with it, as its sources do one by one.
    """
    if sources is not None and len(sources) != len(packs):
        raise ValueError("one source per pack")
    sizes = np.fromiter((len(p) for p in packs), dtype=np.int64, count=len(packs))
    pack_index = np.repeat(np.arange(len(packs), dtype=np.int32), sizes)
    received = np.repeat(np.asarray(received_at, dtype=np.float64), sizes)
    total = int(sizes.sum())
    times = np.fromiter(chain.from_iterable(p.times for p in packs), np.float64, total)
    raw = np.fromiter(chain.from_iterable(p.values for p in packs), np.float64, total)

    # Conversions are looked up once per distinct (metric, unit) pair, then broadcast.
    pair_index, distinct = _pair_index(packs, sizes)
    n_pairs = len(distinct)
    metric_of = np.full(n_pairs, -1, dtype=np.int16)
    scale = np.full(n_pairs, np.nan)
    offset = np.zeros(n_pairs)
    low = np.full(n_pairs, -np.inf)
    high = np.full(n_pairs, np.inf)
    plaus_low = np.full(n_pairs, -np.inf)
    plaus_high = np.full(n_pairs, np.inf)
    converted = np.zeros(n_pairs, dtype=bool)
    for (name, unit), i in distinct.items():
        known = METRICS.get(name)
        if known is None:
            continue
        metric_of[i] = _METRIC_INDEX[name]
        conversion = known.conversion_from(unit)
        if conversion is not None:
            scale[i], offset[i] = conversion.scale, conversion.offset
            converted[i] = unit != known.unit
        low[i], high[i] = known.possible
        plaus_low[i], plaus_high[i] = known.plausible

    metric = metric_of[pair_index]
    value = raw * scale[pair_index] + offset[pair_index]
    # Clipped so that absurd times cast to int64 safely; the window rejects them anyway.
    t_ms = np.rint(np.clip(times, -_T_LIMIT_S, _T_LIMIT_S) * 1000.0).astype(np.int64)

    reject = np.zeros(len(raw), dtype=np.uint8)
    in_window = (times >= received - window.past_s) & (times <= received + window.future_s)
    possible = (value >= low[pair_index]) & (value <= high[pair_index])
    # Later assignments win: the most basic problem is the one reported.
    reject[~in_window] = Reject.OUTSIDE_TIME_WINDOW
    reject[~possible] = Reject.IMPOSSIBLE_VALUE
    reject[np.isnan(scale[pair_index])] = Reject.UNKNOWN_UNIT
    reject[metric < 0] = Reject.UNKNOWN_METRIC

    flags = np.zeros(len(raw), dtype=np.uint8)
    implausible = (value < plaus_low[pair_index]) | (value > plaus_high[pair_index])
    flags[implausible] |= np.uint8(Flag.IMPLAUSIBLE)

    if sources is None:
        source_of_pack = np.arange(len(packs), dtype=np.int64)
    else:
        codes: dict[Hashable, int] = {}
        source_of_pack = np.fromiter((codes.setdefault(s, len(codes)) for s in sources),
                                     dtype=np.int64, count=len(packs))
    ok = np.flatnonzero(reject == Reject.ACCEPTED)
    if len(ok):
        # One sort serves deduplication and the artefact rules: by source, metric, time,
        # then input position, so that the first sample in input order leads each run.
        order = ok[_group_order(source_of_pack[pack_index[ok]], metric[ok], t_ms[ok])]
        source = source_of_pack[pack_index[order]]
        kept = _deduplicate(order, source, metric, t_ms, value, flags, reject)
        _flag_artefacts(order[kept], source[kept], metric, t_ms, value, flags)

    offset_s, first_ms, last_ms = _pack_times(pack_index, times, t_ms, received,
                                              reject == Reject.ACCEPTED, len(packs))
    ahead = offset_s[pack_index] > CLOCK_AHEAD_FLAG_S  # NaN compares false
    flags[ahead & (reject == Reject.ACCEPTED)] |= np.uint8(Flag.CLOCK_AHEAD)

    # Non-canonical units are rare: look at (pack, pair) combinations, not samples.
    raw_units: dict[int, dict[str, list[str]]] = {}
    from_other = (reject == Reject.ACCEPTED) & converted[pair_index]
    if from_other.any():
        pair_list = list(distinct)
        # A packs x pairs table (pairs are few) rather than a sort of the samples.
        used = np.zeros((len(packs), n_pairs), dtype=bool)
        used[pack_index[from_other], pair_index[from_other]] = True
        for pack, pair in zip(*np.nonzero(used), strict=True):
            name, unit = pair_list[pair]
            raw_units.setdefault(int(pack), {}).setdefault(name, []).append(unit)
    return Normalised(pack_index, metric, t_ms, value, flags, reject, offset_s, first_ms,
                      last_ms, raw_units)


def _pair_index(packs: Sequence[Pack], sizes: npt.NDArray[np.int64]
                ) -> tuple[npt.NDArray[np.int64], dict[tuple[str, str], int]]:
    """Per sample, the number of its (metric, unit) pair, and the distinct pairs numbered in
    order of first appearance. A pack of one metric in one unit (the usual) is looked up
    once, not a sample at a time."""
    distinct: dict[tuple[str, str], int] = {}
    per_pack = np.zeros(len(packs), dtype=np.int64)
    mixed: list[int] = []
    for i, p in enumerate(packs):
        n = len(p)
        if n and p.metrics.count(p.metrics[0]) == n and p.units.count(p.units[0]) == n:
            per_pack[i] = distinct.setdefault((p.metrics[0], p.units[0]), len(distinct))
        elif n:
            mixed.append(i)
            for pair in zip(p.metrics, p.units, strict=True):
                distinct.setdefault(pair, len(distinct))
    pair_index = np.repeat(per_pack, sizes)
    if mixed:
        starts = np.cumsum(sizes) - sizes
        for i in mixed:
            p = packs[i]
            pair_index[starts[i]:starts[i] + len(p)] = [
                distinct[pair] for pair in zip(p.metrics, p.units, strict=True)]
    return pair_index, distinct


def _group_order(source: npt.NDArray[np.int64], metric: npt.NDArray[np.int16],
                 t_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Indices that sort by (source, metric, time), ties kept in input order."""
    span = int(t_ms.max()) - int(t_ms.min())
    bits_t, bits_s = span.bit_length(), int(source.max()).bit_length()
    bits_m = len(METRIC_NAMES).bit_length()
    if bits_s + bits_m + bits_t > 62:  # times years apart: the slower general sort
        return np.lexsort((t_ms, metric, source))
    # One int64 key and a stable sort: a third faster than lexsort on three keys, and
    # nearly free when the batch is already in order (packs are, metric by metric).
    key = (source << (bits_m + bits_t)) | (metric.astype(np.int64) << bits_t) | (
        t_ms - t_ms.min())
    return np.argsort(key, kind="stable")


def _deduplicate(order: npt.NDArray[np.intp], source: npt.NDArray[np.int64],
                 metric: npt.NDArray[np.int16], t_ms: npt.NDArray[np.int64],
                 value: npt.NDArray[np.float64], flags: npt.NDArray[np.uint8],
                 reject: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Reject later copies of a (source, metric, t) among the accepted samples, in place;
    returns which positions of ``order`` were kept."""
    m, t = metric[order], t_ms[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (source[1:] == source[:-1]) & (m[1:] == m[:-1]) & (t[1:] == t[:-1])
    if not repeat.any():
        return ~repeat
    # Each position's run leader: the last non-repeat at or before it.
    leader = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(order))))
    v = value[order]
    differs = repeat & (v != v[leader])
    later = order[repeat]
    reject[later] = np.where(differs[repeat], Reject.CONFLICT, Reject.DUPLICATE)
    flags[order[leader[differs]]] |= np.uint8(Flag.CONFLICT)
    return ~repeat


def _flag_artefacts(order: npt.NDArray[np.intp], source: npt.NDArray[np.int64],
                    metric: npt.NDArray[np.int16], t_ms: npt.NDArray[np.int64],
                    value: npt.NDArray[np.float64], flags: npt.NDArray[np.uint8]) -> None:
    """Set the flag of each rule in ARTEFACT_RULES, in place. ``order`` lists the kept
    samples sorted by (source, metric, time): one (source, metric) run after another."""
    m_all = metric[order]
    for metric_index, rule in _RULES:
        # The rule's metric is one contiguous run per source, in time order.
        mine = m_all == metric_index
        idx = order[mine]
        n = len(idx)
        if n < 3:
            continue
        v = value[idx]
        # Every excursion starts with a step over the threshold: without one (the usual
        # batch) the rule has nothing to find, for the price of one pass.
        if not np.any(np.abs(np.diff(v)) > rule.threshold):
            continue
        src = source[mine]
        # linked[i]: samples i and i + 1 are neighbours (same source, close in time).
        linked = (src[1:] == src[:-1]) & (np.diff(t_ms[idx]) <= rule.max_gap_s * 1000.0)
        hit = np.zeros(n, dtype=bool)
        chained = linked[:-1] & linked[1:]  # i, i + 1, i + 2 linked: runs of one
        low = high = v[1:-1]
        for run in range(1, rule.max_run + 1):
            # Runs [i + 1, i + 1 + run) with neighbours i and i + 1 + run, for i < count.
            count = n - run - 1
            if count < 1:
                break
            if run > 1:
                chained = chained[:count] & linked[run:run + count]
                low = np.minimum(low[:count], v[run:run + count])
                high = np.maximum(high[:count], v[run:run + count])
            before, after = v[:count], v[run + 1:run + 1 + count]
            found = np.zeros(count, dtype=bool)
            if rule.up:
                found |= low[:count] - np.maximum(before, after) > rule.threshold
            if rule.down:
                found |= np.minimum(before, after) - high[:count] > rule.threshold
            starts = np.flatnonzero(chained[:count] & found) + 1
            for k in range(run):
                hit[starts + k] = True
        flags[idx[hit]] |= np.uint8(rule.flag)


NO_SAMPLE_MS = int(np.iinfo(np.int64).min)  # first_ms / last_ms of a pack with none accepted


def _pack_times(pack_index: npt.NDArray[np.int32], times: npt.NDArray[np.float64],
                t_ms: npt.NDArray[np.int64], received: npt.NDArray[np.float64],
                accepted: npt.NDArray[np.bool_], n_packs: int
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per pack: newest accepted sample time minus receive time (NaN without one), and the
    oldest and newest accepted sample times in milliseconds (NO_SAMPLE_MS without one)."""
    offset = np.full(n_packs, np.nan)
    first = np.full(n_packs, NO_SAMPLE_MS, dtype=np.int64)
    last = np.full(n_packs, NO_SAMPLE_MS, dtype=np.int64)
    # Packs are contiguous in pack order: one reduceat each, over non-empty packs only
    # (reduceat gives an empty segment its next element rather than nothing).
    sizes = np.bincount(pack_index, minlength=n_packs)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))[sizes > 0]
    if len(starts) == 0:
        return offset, first, last
    ahead = np.maximum.reduceat(np.where(accepted, times - received, -np.inf), starts)
    low = np.minimum.reduceat(np.where(accepted, t_ms, np.iinfo(np.int64).max), starts)
    high = np.maximum.reduceat(np.where(accepted, t_ms, NO_SAMPLE_MS), starts)
    some = ~np.isneginf(ahead)
    filled = np.flatnonzero(sizes > 0)[some]
    offset[filled], first[filled], last[filled] = ahead[some], low[some], high[some]
    return offset, first, last


# Device readings carry a handful of significant digits; the inverse conversion in binary
# floating point lands within a few units in the last place of them, so rounding to this
# many significant digits gives back the decimal the device sent.
RAW_SIGNIFICANT_DIGITS = 12


def raw_values(metric: str, unit: str, value: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Invert the catalogue conversion: the values in ``unit`` that normalised to ``value``.
    Exact for readings of up to RAW_SIGNIFICANT_DIGITS significant digits inside the
    metric's possible range (and none finer than 1e-9 of the unit). Raises KeyError for an
    unknown metric, ValueError for a unit the metric does not accept."""
    conversion = catalogue_metric(metric).conversion_from(unit)
    if conversion is None:
        raise ValueError(f"{metric} is not accepted in {unit!r}")
    back = (np.asarray(value, dtype=np.float64) - conversion.offset) / conversion.scale
    # A recovery tool, not on the ingestion path: a Python loop over the values is fine.
    return np.array([float(f"{x:.{RAW_SIGNIFICANT_DIGITS}g}") for x in back.tolist()],
                    dtype=np.float64)
