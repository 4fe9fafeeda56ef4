"""Whose weighing is it? Attribution of a shared scale's weight to one of its users.

Pure: no I/O. The rule, for a weight W and each user's last weight L_u within RECENT:

- every user must have a recent weight: someone without one could be the person on the
  scale, and nothing says they are not (held: ``no_recent_weight``);
- the closest user must be within their tolerance, max(2 kg, 3 % of L_u) (held:
  ``no_match``, a guest or a large change);
- the next-closest user must be outside their own tolerance *and* at least 1 kg further
  than the closest (held: ``ambiguous``), so two people of similar weight are never guessed.

Body fat from the same weighing follows the weight (the caller groups them).
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RECENT = dt.timedelta(days=90)  # older than a season, a weight says little about today
ABSOLUTE_TOLERANCE_KG = 2.0  # day-to-day water and clothing
RELATIVE_TOLERANCE = 0.03  # the same, proportional for heavier people
MIN_SEPARATION_KG = 1.0  # the runner-up must be clearly further than the match


class Reason(enum.StrEnum):
    ATTRIBUTED = "attributed"
    AMBIGUOUS = "ambiguous"
    NO_RECENT_WEIGHT = "no_recent_weight"
    NO_MATCH = "no_match"
    NO_WEIGHT = "no_weight"  # body fat alone: nothing to attribute it by


@dataclass(frozen=True, slots=True)
class LastWeight:
    kg: float
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Attribution:
    patient_id: uuid.UUID | None  # None: held for the users to claim
    reason: Reason


def tolerance(last_kg: float) -> float:
    """How far from their last weight a user's new weight may be and still be theirs."""
    return max(ABSOLUTE_TOLERANCE_KG, RELATIVE_TOLERANCE * last_kg)


def attribute(weight_kg: float, measured_at: dt.datetime,
              last: Mapping[uuid.UUID, LastWeight | None]) -> Attribution:
    """Attribute a weighing of ``weight_kg`` at ``measured_at`` to one of the users in
    ``last`` (each with their last weight before it, or None), or hold it."""
    if not last:
        return Attribution(None, Reason.NO_MATCH)
    recent: dict[uuid.UUID, float] = {}
    for patient_id, lw in last.items():
        if lw is None or not measured_at - RECENT <= lw.at <= measured_at:
            return Attribution(None, Reason.NO_RECENT_WEIGHT)
        recent[patient_id] = lw.kg
    # Sorted by distance, then id: the outcome does not depend on the mapping's order.
    ranked = sorted((abs(weight_kg - kg), str(p), p) for p, kg in recent.items())
    best_distance, _, best = ranked[0]
    if best_distance > tolerance(recent[best]):
        return Attribution(None, Reason.NO_MATCH)
    if len(ranked) > 1:
        second_distance, _, second = ranked[1]
        if (second_distance <= tolerance(recent[second])
                or second_distance - best_distance < MIN_SEPARATION_KG):
            return Attribution(None, Reason.AMBIGUOUS)
    return Attribution(best, Reason.ATTRIBUTED)


def last_before(times: Sequence[dt.datetime], kgs: Sequence[float],
                moment: dt.datetime) -> LastWeight | None:
    """The last of a user's weights (``times`` ascending) at or before ``moment``."""
    i = bisect.bisect_right(times, moment)
    return LastWeight(kgs[i - 1], times[i - 1]) if i else None
