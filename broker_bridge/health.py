"""Health and metrics over plain HTTP, for probes and Prometheus: the bridge's, and the one
helper every process serves its metrics registry with (``serve``).

``/healthz`` answers 200 while the worker is connected to the broker and its last batch was
stored, 503 otherwise (broker away, or the database refusing batches: nothing is acked then,
and the broker keeps the messages). ``/metrics`` is the Prometheus text format. Neither
shows a health value. Bound to loopback by default: it is for the host's or the pod's
probes, not for the network.

The API and maintenance serve their own registries through ``serve`` (the composition root
wires them; this package imports neither).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from broker_bridge.bridge import Bridge
from broker_bridge.metrics import registry

BRIDGE = web.AppKey("bridge", Bridge)
REGISTRY = web.AppKey("registry", CollectorRegistry)
BEFORE_SCRAPE: web.AppKey[Callable[[], None]] = web.AppKey("before_scrape")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def metrics_app(found: CollectorRegistry,
                before_scrape: Callable[[], None] | None = None) -> web.Application:
    """An application serving ``found`` at /metrics; ``before_scrape`` runs first (to
    refresh a gauge read at scrape time)."""
    app = web.Application()
    app[REGISTRY] = found
    if before_scrape is not None:
        app[BEFORE_SCRAPE] = before_scrape
    app.router.add_get("/metrics", metrics)
    return app


def create_app(bridge: Bridge) -> web.Application:
    def backlog() -> None:
        bridge.stats.backlog = bridge.backlog
    app = metrics_app(registry(lambda: bridge.stats), backlog)
    app[BRIDGE] = bridge
    app.router.add_get("/healthz", healthz)
    return app


async def healthz(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    stats = bridge.stats
    ok = stats.connected and stats.healthy
    return web.json_response({"status": "ok" if ok else "degraded",
                              "broker": "connected" if stats.connected else "disconnected",
                              "database": "ok" if stats.healthy else "failing",
                              "backlog": bridge.backlog}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    before = request.app.get(BEFORE_SCRAPE)
    if before is not None:
        before()
    return web.Response(body=generate_latest(request.app[REGISTRY]),
                        headers={"Content-Type": PROMETHEUS_TEXT})


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port until the returned runner is cleaned up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def start(bridge: Bridge, host: str, port: int) -> web.AppRunner:
    """Serve the bridge's probes until the returned runner is cleaned up."""
    return await serve(create_app(bridge), host, port)
