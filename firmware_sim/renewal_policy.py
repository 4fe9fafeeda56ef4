"""When a device renews its certificate, and how long it waits after a failed renewal.

Pure: times in, times out. The random source is the caller's, so a fleet seeded per device
is reproducible and tests can draw as many moments as they like.

    renew_at      a third of the certificate's life before its end, and up to a sixth of
                  its life earlier at random (a fleet enrolled in one day spreads out)
    retry_delay   after the n-th failure in a row: 1 min doubling up to 6 h, half of it
                  fixed and half at random
    refused_delay after an explicit refusal by the renewer: 6 h
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

RENEW_WHEN_LEFT = 1 / 3  # of the lifetime: months to retry in before a yearly certificate ends
JITTER = 1 / 6  # of the lifetime, at most, earlier still: devices made together renew apart
RETRY_MIN_S = 60.0  # the first retry: a renewer restarting is back within a minute
RETRY_MAX_S = 6 * 3600.0  # the longest wait: four a day against a renewer down for days
REFUSED_WAIT_S = 6 * 3600.0  # a refusal (unpaired, revoked, daily limit) does not change soon
# One exchange (firmware_sim.renewal): how long to wait for the renewer's answer, and how many
# times the same CSR is sent before the exchange counts as failed.
ANSWER_TIMEOUT_S = 10.0  # per CSR sent; the renewer answers in milliseconds
ATTEMPTS = 3  # an answer lost with a session taken over is asked for again


@dataclass(frozen=True)
class RenewalPolicy:
    """The device's renewal timing; the defaults are the firmware's, tests shorten them."""

    rng: random.Random = field(default_factory=random.Random)
    retry_min_s: float = RETRY_MIN_S
    retry_max_s: float = RETRY_MAX_S
    refused_wait_s: float = REFUSED_WAIT_S
    answer_timeout_s: float = ANSWER_TIMEOUT_S
    attempts: int = ATTEMPTS

    def renew_at(self, not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
        """The moment to renew a certificate valid from ``not_before`` to ``not_after``
        (timezone-aware), in ``(not_after - lifetime / 2, not_after - lifetime / 3]``. A
        moment already past means "now" (the caller's to decide)."""
        if not_before.tzinfo is None or not_after.tzinfo is None:
            raise ValueError("certificate times must be timezone-aware")
        lifetime = not_after - not_before
        earlier = lifetime * (RENEW_WHEN_LEFT + JITTER * self.rng.random())
        return not_after - earlier

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) failed renewals in a row: the step
        doubles from ``retry_min_s`` up to ``retry_max_s``; half of it is fixed and half
        random, so a fleet that failed together (renewer down) retries apart."""
        if failures < 1:
            raise ValueError("retry_delay is for a failure: failures must be at least 1")
        step = min(self.retry_max_s, self.retry_min_s * 2.0 ** min(failures - 1, 64))
        return step / 2 + self.rng.uniform(0.0, step / 2)

    def refused_delay(self) -> float:
        """Seconds to wait after the renewer refused (its reason will not change in a
        minute; asking again soon only fills its log)."""
        return self.refused_wait_s
