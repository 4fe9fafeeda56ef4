"""Brute-force limits on sign-in, and a per-client request rate limit.

In memory, per API process: a deployment with N replicas allows N times the rate, which
still turns an online guessing attack from millions of tries a day into a few thousand.

Sign-in failures are counted per account and per client address. Past the limit the answer
is 429 with Retry-After, never a lock: the real user waits minutes, not forever, and an
attacker cannot lock them out. A success clears the account's count.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from api.problems import problem_response


@dataclass(frozen=True)
class Limits:
    failures_per_account: int = 5
    failures_per_client: int = 30
    failure_window_s: float = 15 * 60
    requests_per_second: float = 20.0  # per client address, sustained
    request_burst: float = 100.0


@dataclass
class Throttle:
    """Failures in a sliding window per key; ``retry_after`` when over ``limit``."""

    limit: int
    window_s: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        return times

    def retry_after(self, key: str) -> float | None:
        times = self._recent(key)
        if len(times) < self.limit:
            if not times:
                self._failures.pop(key, None)  # no memory kept for keys at rest
            return None
        return max(1.0, times[0] + self.window_s - self.clock())

    def failure(self, key: str) -> None:
        self._recent(key).append(self.clock())

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class SignInGuard:
    def __init__(self, limits: Limits) -> None:
        self.accounts = Throttle(limits.failures_per_account, limits.failure_window_s)
        self.clients = Throttle(limits.failures_per_client, limits.failure_window_s)

    def check(self, account: str, client: str) -> None:
        wait = max(self.accounts.retry_after(account.lower()) or 0.0,
                   self.clients.retry_after(client) or 0.0)
        if wait:
            raise TooMany(wait)

    def failed(self, account: str, client: str) -> None:
        self.accounts.failure(account.lower())
        self.clients.failure(client)

    def succeeded(self, account: str) -> None:
        self.accounts.clear(account.lower())


class TooMany(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


def too_many(exc: TooMany) -> web.Response:
    return problem_response(429, "too many attempts; try again later",
                            headers={"Retry-After": str(int(exc.retry_after_s + 0.999))})


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float | None:
        """None when the request may go; else the seconds until one token is back."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget full buckets: they are the default
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst - 1}
        return None


def rate_limit_middleware(bucket: TokenBucket) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        wait = bucket.take(request.remote or "unknown")
        if wait is not None:
            return too_many(TooMany(wait))
        return await handler(request)
    return middleware
