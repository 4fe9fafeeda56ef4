"""The API's metrics through prometheus_client: requests by route and status, and latency.

A route is its template (``/v1/me/vitals/{metric}``), never the path a client sent: ids in
paths would make a series per patient and name them. A path no route matches counts as
``unmatched``. Each process makes its own ``ApiMetrics`` (its own registry), served apart
from the API on a loopback port by the composition root.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

# Seconds: most answers take a few milliseconds; a password hash ~0.1 s; an export longer.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("healthiot_api_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("healthiot_api_request_duration_seconds",
                                 "from the request read to the answer ready",
                                 ["method", "route"], buckets=LATENCY_BUCKETS_S,
                                 registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None or request.match_info.http_exception is not None:
        return UNMATCHED
    return resource.canonical


def metrics_middleware(metrics: ApiMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Outermost: counts what the client got, problems included (an exception that escapes
    every other middleware counts as 500)."""
    @web.middleware
    async def count(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.observe(request.method, route_of(request), status,
                            time.perf_counter() - started)
    return count
