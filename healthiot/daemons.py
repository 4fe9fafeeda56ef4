"""Long-running processes of a deployment (compose): one bridge worker, the API, migrations.

Unlike ``run``, they start no servers: the database, broker and files are named by settings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from aiopaho import stop_task
from api import passwords, totp
from api.headers import cors_origins
from api.metrics import ApiMetrics
from broker_bridge import health as bridge_health
from broker_bridge.connection import connect_properties
from healthiot import stack
from healthiot.errors import SettingsError
from healthiot.gcfreeze import freeze_startup
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
from healthiot.workers import worker_client_id, worker_health_port
from storage import roles
from storage.clinicians import Clinicians
from storage.crypto import LocalKeyFile
from storage.errors import DuplicateOperator
from storage.operators import Operators
from storage.record_links import RecordLinks
from vitals import fhir
from vitals.errors import InvalidProfessional

log = logging.getLogger(__name__)

ORPHAN_CHECK_S = 1.0  # how soon a worker whose supervisor died stops


async def _first_of(*waits: Coroutine[Any, Any, None]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _required(settings: Settings, name: str, embedded_default: str | None = None) -> Path:
    """The path setting ``name``; next to the embedded stack's files when it is running
    from this var directory (development only), else required."""
    value = getattr(settings, name)
    if value:
        return Path(value)
    if embedded_default is not None and _embedded(settings):
        return settings.var_dir / embedded_default
    raise SettingsError(f"HEALTHIOT_{name.upper()} is required here")


def _embedded(settings: Settings) -> bool:
    # `healthiot run` wrote the service role's password here: its database is the one meant.
    return (settings.environment == "development" and not settings.database_url
            and (settings.var_dir / EMBEDDED_SERVICE_SECRET).exists())


EMBEDDED_SERVICE_SECRET = "secrets/postgres-service-password"  # noqa: S105 (a file name)


def _database(settings: Settings) -> tuple[str, str]:
    if settings.database_url:
        return settings.database_url, settings.database_password
    if _embedded(settings):
        secret = (settings.var_dir / EMBEDDED_SERVICE_SECRET).read_text().strip()
        return stack.service_dsn(settings), settings.database_password or secret
    raise SettingsError("HEALTHIOT_DATABASE_URL is required here (or run `healthiot run` "
                        "first: its database is then used)")


async def _open_core(settings: Settings) -> Core:
    dsn, password = _database(settings)
    return await open_core(dsn, password, _required(settings, "kek_file", "keys/kek.bin"),
                           owner_keys_dir=_required(settings, "owner_keys_dir",
                                                    "keys/owner-keys"),
                           audit_key_file=settings.path("audit_key_file", "keys/audit.key"),
                           audit_anchor_dir=settings.path("audit_anchor_dir", "audit-anchors"))


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM: how every long-running command waits."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def migrate_only(settings: Settings) -> int:
    """Migrate as the owner role, through the administrator's connection, and give the
    service role (the user of HEALTHIOT_DATABASE_URL) its password."""
    dsn, password = _database(settings)
    if not settings.database_admin_url:
        raise SettingsError("HEALTHIOT_DATABASE_ADMIN_URL is required here: the services' "
                            "role may not change the schema")
    user = dsn.partition("://")[2].rpartition("@")[0].partition(":")[0]
    if user != roles.SERVICE:
        raise SettingsError(f"HEALTHIOT_DATABASE_URL must name the service role "
                            f"{roles.SERVICE}, not {user or 'no user'}")
    applied = await stack.migrate_database(
        settings.database_admin_url, settings.database_admin_password,
        service_password=password, audit_retention_days=settings.retention_audit_days)
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")
    return 0


async def _orphaned(parent: int) -> None:
    """Return once this process's parent has changed: its supervisor died (even by SIGKILL),
    and a worker left behind would go on taking a share of the telemetry next to the
    workers of the supervisor started in its place."""
    while os.getppid() == parent:  # noqa: ASYNC110 (no event exists: the kernel reparents)
        await asyncio.sleep(ORPHAN_CHECK_S)


async def run_bridge(settings: Settings, worker: int | None = None) -> int:
    """One bridge worker; ``worker``: its index under ``healthiot bridge --workers`` (its
    client id and probe port follow from it, and it stops if its supervisor goes)."""
    index = worker or 0
    health_port = worker_health_port(settings.bridge_health_port, index)
    core = await _open_core(settings)
    try:
        bridge = new_bridge(core, client_id=worker_client_id(bridge_client_id(settings), index),
                            ca_file=_required(settings, "mqtt_ca_file"),
                            cert=_required(settings, "mqtt_cert_file"),
                            key=_required(settings, "mqtt_key_file"),
                            batch_size=settings.bridge_batch_size)
        freeze_startup()  # the pool, the keyring, the modules: never garbage
        task = asyncio.create_task(bridge.run(
            settings.mqtt_host, settings.mqtt_services_port,
            connect_properties(settings.bridge_batch_size * 2)), name="bridge")
        probes = None
        if health_port:
            probes = await bridge_health.start(bridge, settings.bridge_health_host,
                                               health_port)
        # The worker recovers from a failed loop by itself; should it end all the same,
        # the process ends with it, non-zero, for its supervisor to start it again, rather
        # than linger half-alive.
        signalled = asyncio.create_task(
            until_signalled() if worker is None else _first_of(until_signalled(),
                                                               _orphaned(os.getppid())),
            name="signals")
        await asyncio.wait({signalled, task}, return_when=asyncio.FIRST_COMPLETED)
        failed = task.done()
        if failed:
            log.error("the bridge worker ended", exc_info=task.exception())
        await stop_task(signalled)
        await stop_task(task)
        await bridge.close()
        if probes is not None:
            await probes.cleanup()
    finally:
        await core.close()
    return 1 if failed else 0


async def run_api(settings: Settings) -> int:
    core = await _open_core(settings)
    try:
        tokens = stack.token_service(settings, _required(settings, "jwt_key_file"))
        async with aiohttp.ClientSession() as session, record_session(settings) as to_record:
            api_metrics = ApiMetrics()
            runner = await start_api(core, tokens, host=settings.api_host,
                                     port=settings.api_port,
                                     tls=server_tls(_required(settings, "api_cert_file"),
                                                    _required(settings, "api_key_file")),
                                     oidc=oidc_verifier(settings, session),
                                     cors_origins=cors_origins(settings.api_cors_origins),
                                     record=record_account(core, settings, to_record),
                                     metrics=api_metrics)
            scraped = await serve_metrics(api_metrics.registry, settings.api_metrics_host,
                                          settings.api_metrics_port)
            await until_signalled()
            await runner.cleanup()
            if scraped is not None:
                await scraped.cleanup()
    finally:
        await core.close()
    return 0


async def run_record_feed(settings: Settings) -> int:
    """The medical-record feed as its own process (one is enough: the outbox leases)."""
    core = await _open_core(settings)
    try:
        async with record_session(settings) as session:
            feed = record_feed(core, settings, session)
            if feed is None:
                raise SettingsError("HEALTHIOT_RECORD_FEED_URL is required here")
            task = asyncio.create_task(feed.run_forever(settings.record_feed_interval_s))
            await until_signalled()
            await stop_task(task)
    finally:
        await core.close()
    return 0


async def set_record_system_id(settings: Settings, device_id: str, eui64: str) -> int:
    """Record the PHD system id of a registered device, for the medical-record feed."""
    if not fhir.EUI64.fullmatch(eui64.upper()):
        raise SettingsError("a system id is an EUI-64: eight hex bytes joined by dashes")
    core = await _open_core(settings)
    try:
        try:
            await RecordLinks(core.pool, core.keyring).set_system_id(device_id, eui64)
        except asyncpg.ForeignKeyViolationError:
            raise SettingsError(f"no registered device {device_id!r}") from None
        print(f"{device_id}: system id {eui64.upper()}")
    finally:
        await core.pool.close()
    return 0


async def add_clinician(settings: Settings, *, rpps: str, profession: str, name: str,
                        username: str) -> int:
    """Create a password + TOTP clinician account and print its secrets, once."""
    core = await _open_core(settings)
    try:
        secret, first_password = totp.new_secret(), secrets.token_urlsafe(18)
        try:
            clinician = await Clinicians(core.pool, core.keyring).create(
                rpps=rpps, profession=profession, display_name=name, username=username,
                password_hash=await asyncio.to_thread(passwords.hash_password, first_password),
                totp_secret=secret)
        except InvalidProfessional as exc:
            raise SettingsError(str(exc)) from None
        print(f"clinician {clinician.id} ({name}, RPPS {rpps})\n"
              f"password: {first_password}\n"
              f"TOTP secret (add to an authenticator app): {totp.secret_base32(secret)}")
    finally:
        await core.close()
    return 0


async def add_operator(settings: Settings, *, username: str, name: str, role: str) -> int:
    """Create a password + TOTP operator account and print its secrets, once."""
    core = await _open_core(settings)
    try:
        secret, first_password = totp.new_secret(), secrets.token_urlsafe(18)
        try:
            operator = await Operators(core.pool, core.keyring).create(
                username=username.strip().lower(), display_name=name, role=role,
                password_hash=await asyncio.to_thread(passwords.hash_password, first_password),
                totp_secret=secret)
        except (DuplicateOperator, ValueError) as exc:
            raise SettingsError(str(exc)) from None
        print(f"operator {operator.id} ({name}, role {role})\n"
              f"password: {first_password}\n"
              f"TOTP secret (add to an authenticator app): {totp.secret_base32(secret)}")
    finally:
        await core.close()
    return 0


async def verify_audit(settings: Settings) -> int:
    """Walk the audit chain; 0 when intact, 1 naming the first row that was edited."""
    core = await _open_core(settings)
    try:
        check = await core.audit.verify_chain(
            retention=dt.timedelta(days=settings.retention_audit_days))
    finally:
        await core.close()
    if check.intact:
        print(f"audit chain intact: {check.rows} entries, {check.anchors} anchors match")
        return 0
    print(f"audit chain BROKEN at entry {check.first_broken_id}: {check.reason} "
          f"({check.rows} entries before it hold)")
    return 1


async def run_maintenance(settings: Settings, *, once: bool, metrics_host: str | None = None,
                          metrics_port: int | None = None) -> int:
    """Passes every interval (or one with ``once``), with /metrics on ``metrics_host``:
    ``metrics_port`` (default: the settings'; 0: off)."""
    core = await _open_core(settings)
    runner: web.AppRunner | None = None
    try:
        job = maintenance(core, settings)
        if once:
            print(f"maintenance: {await job.run_once()}")
            return 0
        runner = await serve_metrics(
            maintenance_registry(job, core), metrics_host or settings.maintenance_metrics_host,
            settings.maintenance_metrics_port if metrics_port is None else metrics_port)
        task = asyncio.create_task(job.run_forever(settings.maintenance_interval_s),
                                   name="maintenance")
        await until_signalled()
        await stop_task(task)
    finally:
        if runner is not None:
            await runner.cleanup()
        await core.close()
    return 0


async def rotate_kek(settings: Settings, new_kek: Path) -> int:
    """Re-wrap every data key with ``new_kek``; then point HEALTHIOT_KEK_FILE at it. Reads
    keep working throughout: the ring unwraps with either KEK."""
    dsn, password = _database(settings)
    old = _required(settings, "kek_file", "keys/kek.bin")
    core = await open_core(dsn, password, new_kek, create_kek=False,
                           owner_keys_dir=_required(settings, "owner_keys_dir", "keys/owner-keys"),
                           previous_kek_files=(old,))
    try:
        async with core.pool.acquire() as conn:
            done = await core.keyring.rewrap_all(conn, LocalKeyFile(new_kek))
    finally:
        await core.close()
    print(f"re-wrapped {done} data keys with {new_kek}; set HEALTHIOT_KEK_FILE to it, "
          f"then retire {old}")
    return 0
