"""Brute-force limits on sign-in and account creation, and a per-client request rate limit.

In memory, per API process: a deployment with N replicas allows N times the rate, which
still turns an online guessing attack from millions of tries a day into a few thousand.

Sign-in (see README, "Sign-in limits"): no count kept here can lock the real user out
from their own address, whatever an attacker does elsewhere.

- Wrong passwords are counted per account *and* client address: five from one address
  slow down that address for that account only.
- Every wrong password also counts toward a slower budget per account, all addresses
  together (100 an hour). Past it, a password alone is refused (429) but a password with a
  current one-time code is still checked: the real user, who has the code, signs in; a
  distributed guesser learns nothing, since a right password with a wrong code answers
  the same 401 as a wrong one.
- Wrong one-time codes are counted per account, whatever the first factor did and from
  every address (five per 15 minutes); a password-only sign-in clears nothing of it, and
  only a right code clears it. Only someone who knows the password can reach this count.
- Failures per client address (all accounts) bound password spraying from one address.

Past a limit the answer is 429 with Retry-After, never a lock.
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
    failures_per_account_and_client: int = 5  # wrong passwords, one account, one address
    failures_per_account: int = 100  # wrong passwords, one account, every address...
    account_window_s: float = 60 * 60  # ...per hour: past it, sign-in needs the code too
    code_failures_per_account: int = 5  # wrong one-time codes, one account, every address
    failures_per_client: int = 30  # wrong passwords or codes from one address, any account
    failure_window_s: float = 15 * 60
    accounts_per_client: int = 10  # account creations (each an argon2 hash) per address...
    creation_window_s: float = 60 * 60  # ...per hour
    nonces_per_client: int = 30  # OIDC nonces per address per failure window
    requests_per_second: float = 20.0  # per client address, sustained
    request_burst: float = 100.0


MAX_KEYS = 100_000  # keys a throttle keeps before it forgets those whose window passed


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
        if len(self._failures) > MAX_KEYS:  # many keys (a spray): forget those at rest
            horizon = self.clock() - self.window_s
            self._failures = {k: t for k, t in self._failures.items()
                              if t and t[-1] > horizon}

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class SignInGuard:
    """The sign-in counts of one process (see the module docstring). ``clock`` is
    replaceable so that a test can move time past a window."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        now = self._now
        self.pairs = Throttle(limits.failures_per_account_and_client,
                              limits.failure_window_s, now)
        self.accounts = Throttle(limits.failures_per_account, limits.account_window_s, now)
        self.codes = Throttle(limits.code_failures_per_account, limits.failure_window_s, now)
        self.clients = Throttle(limits.failures_per_client, limits.failure_window_s, now)
        self.creations = Throttle(limits.accounts_per_client, limits.creation_window_s, now)
        self.nonces = Throttle(limits.nonces_per_client, limits.failure_window_s, now)

    def _now(self) -> float:
        return self.clock()

    def check(self, account: str, client: str, *, with_code: bool) -> None:
        """Raise TooMany when this attempt must wait. Past the per-account budget a
        password alone waits; an attempt with a code waits only for the code count."""
        account = account.lower()
        waits = [self.pairs.retry_after(_pair(account, client)),
                 self.clients.retry_after(client),
                 self.codes.retry_after(account) if with_code
                 else self.accounts.retry_after(account)]
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise TooMany(wait)

    def password_failed(self, account: str, client: str) -> None:
        account = account.lower()
        self.pairs.failure(_pair(account, client))
        self.accounts.failure(account)
        self.clients.failure(client)

    def password_ok(self, account: str, client: str) -> None:
        """Clears this address's count of wrong passwords only: never the code count."""
        self.pairs.clear(_pair(account.lower(), client))

    def code_failed(self, account: str, client: str) -> None:
        self.codes.failure(account.lower())
        self.clients.failure(client)

    def code_ok(self, account: str) -> None:
        self.codes.clear(account.lower())

    def creation(self, client: str) -> None:
        """Count an account creation from ``client``; raise TooMany past the limit."""
        wait = self.creations.retry_after(client)
        if wait is not None:
            raise TooMany(wait)
        self.creations.failure(client)

    def nonce(self, client: str) -> None:
        """Count an OIDC nonce issued to ``client``; raise TooMany past the limit."""
        wait = self.nonces.retry_after(client)
        if wait is not None:
            raise TooMany(wait)
        self.nonces.failure(client)


def _pair(account: str, client: str) -> str:
    return f"{account}\n{client}"  # a username holds no newline


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
