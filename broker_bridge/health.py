"""A bridge worker's health and metrics over HTTP, for probes and Prometheus.

``/healthz`` answers 200 while the worker is connected to the broker and its last batch was
stored, 503 otherwise (broker away, or the database refusing batches: nothing is acked then,
and the broker keeps the messages). ``/metrics`` is the Prometheus text format. Neither
shows a health value. Bound to loopback by default: it is for the host's or the pod's
probes, not for the network.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from broker_bridge.bridge import Bridge
from broker_bridge.metrics import registry

BRIDGE = web.AppKey("bridge", Bridge)
REGISTRY = web.AppKey("registry", CollectorRegistry)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(bridge: Bridge) -> web.Application:
    app = web.Application()
    app[BRIDGE] = bridge
    app[REGISTRY] = registry(lambda: bridge.stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
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
    bridge = request.app[BRIDGE]
    bridge.stats.backlog = bridge.backlog
    return web.Response(body=generate_latest(request.app[REGISTRY]),
                        headers={"Content-Type": PROMETHEUS_TEXT})


async def start(bridge: Bridge, host: str, port: int) -> web.AppRunner:
    """Serve until the returned runner is cleaned up."""
    runner = web.AppRunner(create_app(bridge), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
