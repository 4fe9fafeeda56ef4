"""The bridge's step for shared scales: each weighing to the user it is attributed to, or
held for the users to claim (broker_bridge/attribution.py has the rule).

Runs only for messages of devices that have members; a single-user device's messages pass
through untouched. The users' last weights are read from storage (every source of theirs,
claimed weighings included) once per batch, then kept up to date in memory as the batch's
weighings are attributed in time order.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from broker_bridge.attribution import RECENT, Reason, attribute, last_before
from storage.held import HeldWeighing
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn, Store

WEIGHT = "body_weight"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_History = tuple[list[dt.datetime], list[float]]  # one user's weights, oldest first


def _at(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def _weighings(message: MessageIn) -> dict[int, dict[str, tuple[float, int]]]:
    """The message's samples grouped by time: one weighing per instant."""
    by_time: dict[int, dict[str, tuple[float, int]]] = {}
    for segment in message.segments:
        s = segment.samples
        for t, v, f in zip(s.t_ms.tolist(), s.value.tolist(), s.flags.tolist(), strict=True):
            by_time.setdefault(t, {})[segment.metric] = (v, f)
    return dict(sorted(by_time.items()))


class SharedScales:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def split(self, messages: Sequence[MessageIn],
                    users: Mapping[str, Sequence[uuid.UUID]],
                    counts: Counter[str]) -> list[MessageIn]:
        """``messages`` (all of shared devices, listed in ``users``) with each weighing
        given to its user or held; ``counts`` gets one per weighing, by reason."""
        histories: dict[uuid.UUID, _History] = {}
        times = [t for m in messages for s in m.segments for t in s.samples.t_ms.tolist()]
        if not times:
            return list(messages)
        start, end = _at(min(times)) - RECENT, _at(max(times) + 1)
        for patient_id in {p for m in messages for p in users[m.device_id]}:
            series = await self._store.read_series(patient_id, WEIGHT, start, end)
            histories[patient_id] = ([_at(t) for t in series.t_ms.tolist()],
                                     series.value.tolist())
        return [self._split_one(m, users[m.device_id], histories, counts) for m in messages]

    @staticmethod
    def _split_one(message: MessageIn, users: Sequence[uuid.UUID],
                   histories: dict[uuid.UUID, _History], counts: Counter[str]) -> MessageIn:
        given: dict[tuple[uuid.UUID, str], list[tuple[int, float, int]]] = {}
        held: list[HeldWeighing] = []
        for t, values in _weighings(message).items():
            moment = _at(t)
            if WEIGHT in values:
                kg = values[WEIGHT][0]
                result = attribute(kg, moment, {
                    u: last_before(*histories[u], moment) for u in users})
            else:
                result = None
            reason = Reason.NO_WEIGHT if result is None else result.reason
            counts[reason] += 1
            if result is None or result.patient_id is None:
                held.append(HeldWeighing(moment, reason, values))
                continue
            for metric, (v, f) in values.items():
                given.setdefault((result.patient_id, metric), []).append((t, v, f))
            # Their latest weight now, for the batch's later weighings.
            when, kgs = histories[result.patient_id]
            i = bisect.bisect_right(when, moment)
            when.insert(i, moment)
            kgs.insert(i, kg)
        segments = [SegmentIn(p, metric, Samples(
            np.array([t for t, _, _ in rows], np.int64), np.array([v for _, v, _ in rows]),
            np.array([f for _, _, f in rows], np.uint8)))
            for (p, metric), rows in given.items()]
        return dataclasses.replace(message, segments=segments, held=held)
