"""``healthiot run``: the embedded stack, the bridge, the API and a demo fleet, with progress.

Shutdown is ordered: the fleet stops measuring and flushes its outboxes, the bridge drains
what was sent, then the API, the pool, the broker and the database stop, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from aiopaho import stop_task
from api.headers import cors_origins
from api.metrics import ApiMetrics
from broker_bridge import health as bridge_health
from broker_bridge.bridge import Bridge
from broker_bridge.connection import connect_properties, tls_context
from devices.renewal import CertificateRenewer, RenewalService
from devices.revocation import CrlPublisher, Revoker
from devices.sessions import SessionEnder
from devices.takeover import TakeoverStore, TakeoverWatcher
from firmware_sim.device import Broker, SimulatedDevice
from healthiot import demo, stack
from healthiot.gcfreeze import freeze_startup
from healthiot.localservers import MosquittoServer, PostgresServer
from healthiot.services import (
    Core,
    bridge_client_id,
    maintenance,
    maintenance_registry,
    new_bridge,
    oidc_verifier,
    open_core,
    record_account,
    record_feed,
    record_session,
    serve_metrics,
    server_tls,
    start_api,
)
from healthiot.settings import Settings
from healthiot.workers import Supervisor, default_workers

PROGRESS_EVERY_S = 1.0  # on a terminal; 5 s in a log
# How long the end of a run waits for the bridge to catch up; longer than the bridge's gap
# grace period, so that a message lost after its PUBACK can still be asked for and resent.
DRAIN_TIMEOUT_S = 30.0
Servers = list[PostgresServer | MosquittoServer]
# What runs once the stack is up: the demo fleet, or `healthiot simulate`'s. Returns the
# exit status.
Workload = Callable[[Core, stack.Materials, Bridge, asyncio.Event, Servers], Awaitable[int]]


@dataclass
class Totals:
    devices: int
    messages: int
    samples: int
    stored: int
    rejected: int

    @property
    def lost(self) -> int:
        return self.samples - self.stored - self.rejected

    def summary(self) -> str:
        return (f"summary: devices={self.devices} messages={self.messages} "
                f"samples={self.samples} stored={self.stored} rejected={self.rejected} "
                f"lost={self.lost}")


def _say(text: str) -> None:
    print(text, flush=True)


def _newcomer_help(settings: Settings, accounts: dict[str, demo.DemoAccount]) -> str:
    alice = accounts["alice"]
    base = f"https://localhost:{settings.api_port}"
    ca = settings.var_dir / "pki" / "ca.pem"
    return "\n".join([
        "",
        f"API: {base}   (trust {ca})",
        "Demo patients (development only, random, saved in "
        f"{settings.var_dir / 'demo' / 'credentials.json'}):",
        *(f"  {a.username}: password {a.password}" for a in accounts.values()),
        "Log in as alice (password + one-time code), then read her heart rate:",
        f"  CODE=$(.venv/bin/healthiot totp {alice.username})",
        f"  TOKEN=$(curl -s --cacert {ca} {base}/v1/auth/login -H 'content-type: "
        "application/json' \\",
        f"    -d '{{\"username\":\"{alice.username}\",\"password\":\"{alice.password}\","
        "\"totp\":\"'$CODE'\"}' | python3 -c 'import json,sys; "
        "print(json.load(sys.stdin)[\"access_token\"])')",
        f"  curl -s --cacert {ca} -H \"Authorization: Bearer $TOKEN\" "
        f"{base}/v1/me/vitals/heart_rate",
        "",
    ])


async def run(settings: Settings, duration: float | None,
              workload: Workload | None = None) -> int:
    """Run the whole stack with ``workload`` (by default the demo fleet for ``duration``);
    returns the exit status (0 when nothing was lost)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    materials = await asyncio.to_thread(stack.prepare, settings)
    broker = stack.mosquitto_server(settings, materials)
    if not settings.embedded_database:
        return await _run_on_broker(settings, materials, broker, [], stop, duration, workload)
    postgres = stack.postgres_server(settings, materials)
    _say(f"starting PostgreSQL on 127.0.0.1:{settings.pg_port} ({settings.var_dir}/pg)")
    await postgres.start()
    try:
        return await _run_on_broker(settings, materials, broker, [postgres], stop, duration,
                                    workload)
    finally:
        postgres.stop()
        _say("stopped: database and broker are down, nothing left running")


async def _run_on_broker(settings: Settings, materials: stack.Materials,
                         broker: MosquittoServer, servers: Servers, stop: asyncio.Event,
                         duration: float | None, workload: Workload | None) -> int:
    """Start the broker, then the services, on the database of ``settings`` (the embedded
    one in ``servers``, or HEALTHIOT_DATABASE_URL's)."""
    if not servers:
        _say("using the database of HEALTHIOT_DATABASE_URL")
    try:
        _say(f"starting Mosquitto (mTLS only) on 127.0.0.1:{settings.mqtt_port} (devices) "
             f"and :{settings.mqtt_services_port} (services)")
        await broker.start()
        try:
            return await _run_services(settings, materials, [*servers, broker], stop,
                                       duration, workload)
        finally:
            broker.stop()
    finally:
        if not servers:
            _say("stopped: broker is down, nothing left running")


async def _run_services(settings: Settings, materials: stack.Materials,
                        servers: Servers, stop: asyncio.Event,
                        duration: float | None, workload: Workload | None) -> int:
    if settings.embedded_database:
        server_dsn = f"postgresql://{stack.DB_USER}@127.0.0.1:{settings.pg_port}/postgres"
        admin_dsn = f"postgresql://{stack.DB_USER}@127.0.0.1:{settings.pg_port}/{stack.DB_NAME}"
        await stack.ensure_database(server_dsn, materials.db_password, stack.DB_NAME)
        applied = await stack.migrate_database(
            admin_dsn, materials.db_password, service_password=materials.db_service_password,
            audit_retention_days=settings.retention_audit_days)
        _say(f"schema ready ({len(applied)} migration(s) applied now)")
        # The services from here on: the service role, not the superuser that migrated.
        dsn, password = stack.service_dsn(settings), materials.db_service_password
    else:
        # An existing database (HEALTHIOT_DATABASE_URL), made and migrated elsewhere
        # (`healthiot db migrate`, as its administrator), as the daemons' is.
        dsn, password = settings.database_url, settings.database_password
    # Torn down in reverse: the bridge stops consuming, then the API, then the pool.
    async with contextlib.AsyncExitStack() as resources:
        core = await open_core(dsn, password, materials.kek,
                               create_kek=settings.environment == "development",
                               audit_key_file=materials.audit_key,
                               audit_anchor_dir=materials.audit_anchors)
        resources.push_async_callback(core.close)
        tokens = stack.token_service(settings, materials.jwt_key)
        session = await resources.enter_async_context(aiohttp.ClientSession())
        to_record = await resources.enter_async_context(record_session(settings))
        broker = next(s for s in servers if isinstance(s, MosquittoServer))
        revoker = await _revoker(settings, materials, core, broker)
        for task in _device_services(settings, materials, core, broker):
            resources.push_async_callback(stop_task, task)
        api_metrics = ApiMetrics()
        runner = await start_api(core, tokens, host=settings.api_host, port=settings.api_port,
                                 tls=server_tls(materials.api_cert, materials.api_key),
                                 oidc=oidc_verifier(settings, session), revoker=revoker,
                                 cors_origins=cors_origins(settings.api_cors_origins),
                                 record=record_account(core, settings, to_record),
                                 metrics=api_metrics)
        resources.push_async_callback(runner.cleanup)
        job = maintenance(core, settings)
        # Each part's metrics on its own port, as the separate processes of compose serve
        # them: one scrape configuration for both.
        for found, host, port in (
                (api_metrics.registry, settings.api_metrics_host, settings.api_metrics_port),
                (maintenance_registry(job, core), settings.maintenance_metrics_host,
                 settings.maintenance_metrics_port)):
            served = await serve_metrics(found, host, port)
            if served is not None:
                resources.push_async_callback(served.cleanup)
        upkeep = asyncio.create_task(job.run_forever(settings.maintenance_interval_s),
                                     name="maintenance")
        resources.push_async_callback(stop_task, upkeep)
        feed = record_feed(core, settings, to_record)
        if feed is not None:
            feed_task = asyncio.create_task(feed.run_forever(settings.record_feed_interval_s),
                                            name="record-feed")
            resources.push_async_callback(stop_task, feed_task)
        bridge = new_bridge(core, client_id=bridge_client_id(settings),
                            ca_file=materials.ca.ca_file, cert=materials.bridge_cert,
                            key=materials.bridge_key, batch_size=settings.bridge_batch_size)
        resources.push_async_callback(bridge.close)
        ready = asyncio.Event()
        bridge_task = asyncio.create_task(bridge.run(
            settings.mqtt_host, settings.mqtt_services_port,
            connect_properties(settings.bridge_batch_size * 2), ready), name="bridge")
        resources.push_async_callback(stop_task, bridge_task)
        if settings.bridge_health_port:
            probes = await bridge_health.start(bridge, settings.bridge_health_host,
                                               settings.bridge_health_port)
            resources.push_async_callback(probes.cleanup)
        await asyncio.wait_for(ready.wait(), 30)
        freeze_startup()  # servers, pools, the bridge: what lives as long as the process
        if workload is not None:  # it reads this bridge's counters: the only worker
            return await workload(core, materials, bridge, stop, servers)
        extra = (settings.bridge_workers or default_workers()) - 1
        if extra > 0:
            workers = Supervisor(extra, first_index=1,
                                 env=_worker_environ(settings, materials))
            supervising = asyncio.create_task(workers.run(), name="bridge-workers")
            resources.push_async_callback(_stop_workers, workers, supervising)
            _say(f"bridge: this process and {extra} worker process(es) beside it")

        accounts = await demo.ensure_patients(core, settings.var_dir / "demo")
        fleet = await demo.ensure_fleet(
            core, materials.ca, accounts, settings.var_dir / "demo",
            Broker(settings.mqtt_host, settings.mqtt_port, materials.ca.ca_file))
        _say(_newcomer_help(settings, accounts))
        try:
            totals = await _run_fleet(fleet, core, bridge, stop, duration, servers)
        finally:
            for device in fleet:
                device.close()  # what is still queued stays on its flash for the next run
    _say(totals.summary())
    return 0 if totals.lost == 0 else 1


def _worker_environ(settings: Settings, materials: stack.Materials) -> dict[str, str]:
    """The environment of ``healthiot bridge --worker i`` beside this process: the same
    settings, the stack's own bridge identity and database (found in var/), no probes (the
    ports would be the next ones up, which may be taken)."""
    return {**os.environ, "HEALTHIOT_VAR_DIR": str(settings.var_dir),
            "HEALTHIOT_MQTT_CA_FILE": str(materials.ca.ca_file),
            "HEALTHIOT_MQTT_CERT_FILE": str(materials.bridge_cert),
            "HEALTHIOT_MQTT_KEY_FILE": str(materials.bridge_key),
            "HEALTHIOT_KEK_FILE": str(materials.kek),
            "HEALTHIOT_BRIDGE_CLIENT_ID": bridge_client_id(settings),
            "HEALTHIOT_BRIDGE_HEALTH_PORT": "0"}


async def _stop_workers(workers: Supervisor, supervising: asyncio.Task[int]) -> None:
    workers.stopping.set()
    await supervising


def _device_services(settings: Settings, materials: stack.Materials, core: Core,
                     broker: MosquittoServer) -> list[asyncio.Task[None]]:
    """The takeover watcher (client-id takeovers show only in the broker's connection log)
    and the certificate renewer (CSRs over MQTT, answered from the device CA)."""
    watcher = TakeoverWatcher(broker.log_file, TakeoverStore(core.pool))
    renewer = RenewalService(
        CertificateRenewer(core.registry, materials.ca, core.pool),
        settings.mqtt_host, settings.mqtt_services_port,
        tls_context(materials.ca.ca_file, materials.renewer_cert, materials.renewer_key))
    return [asyncio.create_task(watcher.run(), name="takeover-watcher"),
            asyncio.create_task(renewer.run(), name="renewer")]


async def _revoker(settings: Settings, materials: stack.Materials, core: Core,
                   broker: MosquittoServer) -> Revoker:
    """Unpairing in the embedded stack: CRL into the broker's crlfile plus SIGHUP, then a
    session takeover. The CRL is re-signed now, so one from a long-stopped run (past its
    nextUpdate, which would bar every client) never stays in place."""
    publisher = CrlPublisher(core.registry, materials.ca, broker.crl_file, broker.reload)
    await publisher.publish()
    takeover = SessionEnder(settings.mqtt_host, settings.mqtt_services_port, tls_context(
        materials.ca.ca_file, materials.revoker_cert, materials.revoker_key))
    return Revoker(core.registry, publisher, takeover)


async def _run_fleet(fleet: list[SimulatedDevice], core: Core, bridge: Bridge,
                     stop: asyncio.Event, duration: float | None,
                     servers: Servers) -> Totals:
    """Run the devices until ``stop`` or ``duration``, then flush and count."""
    baseline = await core.store.count_stored([d.device_id for d in fleet])  # earlier runs
    device_stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(device_stop), name=f"device-{d.device_id}")
             for d in fleet]
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    every = PROGRESS_EVERY_S if interactive else 5.0
    last_messages, last_time = 0, started
    _say("running; Ctrl-C stops" if duration is None else f"running for {duration:g} s")
    try:
        while not stop.is_set():
            timeout = every
            if duration is not None:
                timeout = min(every, max(0.0, started + duration - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            for server in servers:
                server.check_alive()
            now = time.monotonic()
            sent = sum(d.ledger.messages for d in fleet)
            rate = (sent - last_messages) / max(now - last_time, 1e-6)
            last_messages, last_time = sent, now
            stats = bridge.stats
            # Stored and rejected as the database counts them: every worker's, not only
            # this process's (quarantined messages are this process's count).
            _, stored, rejected = await core.store.count_stored([d.device_id for d in fleet])
            line = (f"devices online {sum(d.online for d in fleet)}/{len(fleet)} | "
                    f"{rate:5.1f} msg/s | sent {sent} msgs "
                    f"{sum(d.ledger.samples for d in fleet)} samples | stored "
                    f"{stored - baseline[1]} | rejected {rejected - baseline[2]} | "
                    f"quarantined {stats.quarantined} | db "
                    f"{'ok' if stats.healthy else 'RETRYING'}")
            print(("\r" + line) if interactive else line, end="" if interactive else "\n",
                  flush=True)
            if duration is not None and now - started >= duration:
                break
    finally:
        if interactive:
            print(flush=True)
        device_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    _say("stopping the fleet: delivering device outboxes, answering resend requests")
    # Devices stay connected while the bridge catches up: a gap it finds now can still be
    # asked for and resent.
    done = asyncio.Event()
    serving = [asyncio.create_task(d.serve(done), name=f"serve-{d.device_id}") for d in fleet]
    try:
        return await _drain(fleet, core, baseline)
    finally:
        done.set()
        await asyncio.gather(*serving, return_exceptions=True)


async def _drain(fleet: list[SimulatedDevice], core: Core,
                 baseline: tuple[int, int, int]) -> Totals:
    """Wait until the outboxes are empty and the database accounts for every sample the
    broker accepted."""
    ids = [d.device_id for d in fleet]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        samples = sum(d.ledger.samples for d in fleet)
        counts = await core.store.count_stored(ids)
        stored, rejected = counts[1] - baseline[1], counts[2] - baseline[2]
        if ((stored + rejected >= samples and not any(d.pending for d in fleet))
                or time.monotonic() > deadline):
            break
        await asyncio.sleep(0.2)
    return Totals(len(fleet), sum(d.ledger.messages for d in fleet), samples, stored, rejected)
