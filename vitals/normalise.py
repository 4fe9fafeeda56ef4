"""Vectorised normalisation of many SenML packs at once.

numpy has a fixed cost of several microseconds per call, so the bridge concatenates every
pack of a batch and normalises the whole batch in one pass: unit conversion to the canonical
UCUM unit, device time to UTC milliseconds, the acceptance window, and the plausibility
ranges of the catalogue. Nothing is dropped silently: every sample leaves either accepted
(with flags) or rejected with a reason code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import numpy as np
import numpy.typing as npt

from vitals.catalogue import METRIC_NAMES, METRICS
from vitals.senml import Pack

DEFAULT_PAST_WINDOW_S = 30 * 24 * 3600.0  # older readings are replays gone wrong
DEFAULT_FUTURE_WINDOW_S = 5 * 60.0  # a device clock a little ahead is normal; more is not
_T_LIMIT_S = 9e15  # seconds whose milliseconds still fit in an int64


class Flag(IntFlag):
    """Quality flags stored with each accepted sample."""

    NONE = 0
    IMPLAUSIBLE = 1  # outside the plausible range, inside the possible one


class Reject(IntEnum):
    """Why a sample was not accepted; 0 means accepted."""

    ACCEPTED = 0
    UNKNOWN_METRIC = 1
    UNKNOWN_UNIT = 2
    IMPOSSIBLE_VALUE = 3
    OUTSIDE_TIME_WINDOW = 4


@dataclass(frozen=True, slots=True)
class Window:
    """The acceptance window for sample times, relative to the receive time."""

    past_s: float = DEFAULT_PAST_WINDOW_S
    future_s: float = DEFAULT_FUTURE_WINDOW_S


@dataclass(frozen=True, slots=True)
class Normalised:
    """Samples of a batch in columns; ``pack`` says which input pack each came from."""

    pack: npt.NDArray[np.int32]
    metric: npt.NDArray[np.int16]  # index into METRIC_NAMES, -1 when unknown
    t_ms: npt.NDArray[np.int64]  # UTC milliseconds, device clock
    value: npt.NDArray[np.float64]  # canonical unit
    flags: npt.NDArray[np.uint8]
    reject: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.value)


_METRIC_INDEX = {name: i for i, name in enumerate(METRIC_NAMES)}


def normalise(packs: Sequence[Pack], received_at: Sequence[float],
              window: Window = Window()) -> Normalised:
    """Normalise ``packs`` (received at ``received_at`` epoch seconds) in one vectorised pass."""
    sizes = np.fromiter((len(p) for p in packs), dtype=np.int64, count=len(packs))
    pack_index = np.repeat(np.arange(len(packs), dtype=np.int32), sizes)
    received = np.repeat(np.asarray(received_at, dtype=np.float64), sizes)
    names = [m for p in packs for m in p.metrics]
    units = [u for p in packs for u in p.units]
    times = np.fromiter((t for p in packs for t in p.times), dtype=np.float64, count=len(names))
    raw = np.fromiter((v for p in packs for v in p.values), dtype=np.float64, count=len(names))

    # Conversions are looked up once per distinct (metric, unit) pair, then broadcast.
    pairs = list(zip(names, units, strict=True))
    distinct = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
    pair_index = np.fromiter((distinct[p] for p in pairs), dtype=np.int64, count=len(pairs))
    n_pairs = len(distinct)
    metric_of = np.full(n_pairs, -1, dtype=np.int16)
    scale = np.full(n_pairs, np.nan)
    offset = np.zeros(n_pairs)
    low = np.full(n_pairs, -np.inf)
    high = np.full(n_pairs, np.inf)
    plaus_low = np.full(n_pairs, -np.inf)
    plaus_high = np.full(n_pairs, np.inf)
    for (name, unit), i in distinct.items():
        known = METRICS.get(name)
        if known is None:
            continue
        metric_of[i] = _METRIC_INDEX[name]
        conversion = known.conversion_from(unit)
        if conversion is not None:
            scale[i], offset[i] = conversion.scale, conversion.offset
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
    return Normalised(pack_index, metric, t_ms, value, flags, reject)
