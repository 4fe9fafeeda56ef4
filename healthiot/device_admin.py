"""``healthiot devices ...``: the factory station and the operator's side of the registry.

They reach the database named by the settings, or the embedded stack's while ``healthiot
run`` is up, and the device CA under ``--pki`` (default var/pki).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from pathlib import Path

import asyncpg
from aiohttp import web

from aiopaho import stop_task
from broker_bridge.connection import tls_context
from broker_bridge.health import PROMETHEUS_TEXT
from devices import takeover
from devices.ca import CertificateAuthority
from devices.errors import DeviceError, UnknownDevice
from devices.provisioning import provision, write_enrolment
from devices.registry import Registry
from devices.renewal import CertificateRenewer, RenewalService
from devices.revocation import CrlPublisher, Revoker
from devices.sessions import SessionEnder
from healthiot import stack
from healthiot.daemons import until_signalled
from healthiot.errors import SettingsError
from healthiot.settings import Settings
from storage.audit import Anchors, Audit, AuditKey
from storage.erasure import device_key_owners
from storage.owner_secrets import OwnerSecrets
from storage.quarantine import get_quarantined, list_quarantined, purge_quarantined


def crl_path(settings: Settings, given: Path | None) -> Path:
    """Where the broker's ``crlfile`` points: given, or the embedded broker's."""
    return given or settings.var_dir / "mosquitto" / "device-ca.crl"


def _reload_embedded_broker(settings: Settings) -> None:
    """SIGHUP the embedded broker if it runs (its pid file is written by ``healthiot run``);
    a deployment's broker is reloaded by its own supervisor (compose: ``kill -s HUP``)."""
    pid_file = settings.var_dir / "mosquitto" / "mosquitto.pid"
    try:
        pid = int(pid_file.read_text())
        if Path(f"/proc/{pid}/comm").read_text().strip() != "mosquitto":
            return  # a stale file naming another process: never signal it
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return


def _takeover(settings: Settings, pki: Path, cert: Path | None,
              key: Path | None) -> SessionEnder | None:
    """The session takeover, when a revoker service identity is at hand (the embedded
    stack makes one under var/pki/services); None otherwise."""
    cert = cert or pki / "services" / "revoker.pem"
    key = key or pki / "services" / "revoker.key"
    if not (cert.exists() and key.exists()):
        return None
    ca_file = settings.mqtt_ca_file or pki / "ca.pem"
    return SessionEnder(settings.mqtt_host, settings.mqtt_services_port,
                           tls_context(ca_file, cert, key))


async def _pool(settings: Settings) -> asyncpg.Pool:
    if settings.database_url:
        dsn, password = settings.database_url, settings.database_password
    else:
        secret = settings.var_dir / "secrets" / "postgres-service-password"
        if not secret.exists():
            raise SettingsError("no database: set HEALTHIOT_DATABASE_URL, or start the "
                                "embedded stack with `healthiot run` first")
        dsn = stack.service_dsn(settings)
        password = secret.read_text().strip()
    try:
        return await asyncpg.create_pool(dsn, password=password, min_size=1, max_size=2,
                                         timeout=10, command_timeout=30)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SettingsError(f"cannot reach the database: {exc}") from None


async def provision_device(settings: Settings, *, model: str, serial: str, out: Path,
                           csr: Path | None, pki: Path | None,
                           firmware: str | None) -> int:
    """Issue the certificate for the CSR the device made and register it as provisioned;
    write the device's enrolment into ``out``; print the id and the pairing code."""
    csr_file = csr or out / "device.csr"
    try:
        csr_pem = csr_file.read_bytes()
    except OSError:
        raise SettingsError(f"no CSR at {csr_file}: the device makes its key and CSR "
                            "(its CN is its device id) and hands over the CSR") from None
    ca = CertificateAuthority.load_or_create(pki or settings.var_dir / "pki")
    pool = await _pool(settings)
    try:
        enrolment, cert = await provision(
            Registry(pool), ca, model=model, serial=serial, csr_pem=csr_pem,
            broker_host=settings.mqtt_host, broker_port=settings.mqtt_port,
            firmware_version=firmware)
    except DeviceError as exc:
        raise SettingsError(str(exc)) from None
    finally:
        await pool.close()
    await asyncio.to_thread(write_enrolment, out, enrolment, cert, ca)
    print(f"provisioned {enrolment.device_id} ({model}, serial {serial}) into {out}\n"
          f"pairing code (the device shows it): {enrolment.pairing_code}")
    return 0


async def revoke_device(settings: Settings, device_id: str, *, pki: Path | None,
                        crl_file: Path | None, revoker_cert: Path | None = None,
                        revoker_key: Path | None = None) -> int:
    """Revoke a device as unpairing does: registry, certificate history, CRL, broker
    reload, and the live session taken over when a revoker identity is available."""
    pki = pki or settings.var_dir / "pki"
    ca = CertificateAuthority.load_or_create(pki)
    takeover = _takeover(settings, pki, revoker_cert, revoker_key)
    pool = await _pool(settings)
    try:
        registry = Registry(pool)
        publisher = CrlPublisher(registry, ca, crl_path(settings, crl_file),
                                 lambda: _reload_embedded_broker(settings))
        try:
            device = await Revoker(registry, publisher, takeover).revoke(device_id)
        except UnknownDevice:
            raise SettingsError(f"no device {device_id}: nothing to revoke") from None
        except DeviceError as exc:
            raise SettingsError(str(exc)) from None
        # Its held weighings and quarantine went with it (a trigger deleted the wrapped
        # keys); the secret halves go too, or a backup would still open them.
        owners = OwnerSecrets(settings.owner_keys_dir or settings.path(
            "kek_file", "keys/kek.bin").parent / "owner-keys")
        for owner in device_key_owners(device_id):
            owners.destroy(owner)
        audit = Audit(pool, AuditKey(settings.path("audit_key_file", "keys/audit.key"),
                                     create=settings.environment == "development"),
                      Anchors(settings.path("audit_anchor_dir", "audit-anchors")))
        await audit.record(actor="operator:cli", patient_id=device.patient_id,
                           action="device", resource=f"device/{device_id}", outcome="revoked")
        audit.flush()  # before this process ends
    finally:
        await pool.close()
    print(f"revoked {device_id}; CRL written to {publisher.path}; live session "
          + ("taken over" if takeover else "not ended (no revoker identity: --revoker-cert)"))
    return 0


async def publish_crl(settings: Settings, *, pki: Path | None, crl_file: Path | None) -> int:
    """Re-sign the CRL from the registry (before it expires, or after a lost publication)."""
    ca = CertificateAuthority.load_or_create(pki or settings.var_dir / "pki")
    pool = await _pool(settings)
    try:
        publisher = CrlPublisher(Registry(pool), ca, crl_path(settings, crl_file),
                                 lambda: _reload_embedded_broker(settings))
        count = await publisher.publish()
    finally:
        await pool.close()
    print(f"CRL with {count} revoked certificate(s) written to {publisher.path}")
    return 0


async def run_takeover_watch(settings: Settings, log_file: Path, *, metrics_host: str,
                             metrics_port: int) -> int:
    """Follow the broker's log (a file the broker writes with connection messages: in a
    deployment, a volume shared with it) and record every client-id takeover; serve the
    counter at /metrics unless ``metrics_port`` is 0."""
    pool = await _pool(settings)
    watcher = takeover.TakeoverWatcher(log_file, takeover.TakeoverStore(pool))
    runner: web.AppRunner | None = None
    try:
        task = asyncio.create_task(watcher.run(), name="takeover-watcher")
        if metrics_port:
            async def metrics(_request: web.Request) -> web.Response:
                return web.Response(body=takeover.render(watcher.stats).encode(),
                                    headers={"Content-Type": PROMETHEUS_TEXT})
            app = web.Application()
            app.router.add_get("/metrics", metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, metrics_host, metrics_port).start()
        print(f"following {log_file}", flush=True)
        await until_signalled()
        await stop_task(task)
    finally:
        if runner is not None:
            await runner.cleanup()
        await pool.close()
    return 0


async def run_renewer(settings: Settings, *, pki: Path | None, cert: Path | None,
                      key: Path | None) -> int:
    """Answer devices' renewal CSRs from the device CA under ``pki``, as ``svc-renewer``.
    Several may run: they share the subscription."""
    pki = pki or settings.var_dir / "pki"
    if not (pki / "device-ca.key").exists():
        raise SettingsError(f"no device CA in {pki}: run `healthiot ca init` or give --pki")
    ca = CertificateAuthority.load_or_create(pki)
    context = tls_context(settings.mqtt_ca_file or ca.ca_file,
                          cert or pki / "services" / "renewer.pem",
                          key or pki / "services" / "renewer.key")
    pool = await _pool(settings)
    try:
        service = RenewalService(CertificateRenewer(Registry(pool), ca, pool),
                                 settings.mqtt_host, settings.mqtt_services_port, context)
        task = asyncio.create_task(service.run(), name="renewer")
        await until_signalled()
        await stop_task(task)
    finally:
        await pool.close()
    return 0


async def list_quarantine(settings: Settings, *, reason: str | None, device_id: str | None,
                          limit: int, hours: float | None = None) -> int:
    """Print the quarantine records, tab-separated, newest first (of the last ``hours``
    when given)."""
    since = None if hours is None else dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    pool = await _pool(settings)
    try:
        rows = await list_quarantined(pool, reason=reason, device_id=device_id, limit=limit,
                                      since=since)
    finally:
        await pool.close()
    print("id\treceived_at\tdevice\treason\tdetail")
    for q in rows:
        detail = " ".join(q.detail.split())  # one line per record, whatever a detail holds
        print(f"{q.id}\t{q.received_at.isoformat()}\t{q.device_id or '-'}\t{q.reason}\t"
              f"{detail}")
    return 0


async def show_quarantined(settings: Settings, record_id: int) -> int:
    """Print one record's metadata, one field a line; the payload stays sealed."""
    pool = await _pool(settings)
    try:
        q = await get_quarantined(pool, record_id)
    finally:
        await pool.close()
    if q is None:
        print(f"healthiot: no quarantine record {record_id}", file=sys.stderr)
        return 1
    for name, value in (("id", q.id), ("received_at", q.received_at.isoformat()),
                        ("device", q.device_id or "-"), ("topic", q.topic),
                        ("reason", q.reason), ("detail", " ".join(q.detail.split()))):
        print(f"{name}: {value}")
    return 0


async def purge_quarantine(settings: Settings, *, older_than_days: float,
                           device_id: str | None, reason: str | None) -> int:
    """Delete the records older than ``older_than_days``; print how many."""
    before = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
    pool = await _pool(settings)
    try:
        removed = await purge_quarantined(pool, before=before, device_id=device_id,
                                          reason=reason)
    finally:
        await pool.close()
    print(f"{removed} quarantine records deleted (received before {before.isoformat()})")
    return 0
