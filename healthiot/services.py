"""Wiring: the pool, keys, stores, the API server and the bridge, each created once."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from api.app import create_app
from api.headers import ApiRunner
from api.metrics import ApiMetrics
from api.oidc import OidcConfig, OidcVerifier
from api.record_auth import RecordAccount, RecordAuthConfig
from api.record_feed import FeedConfig, FeedSender
from api.record_models import ModelCatalogue
from api.requests import ApiDeps
from api.tokens import TokenService
from broker_bridge import health as bridge_health
from broker_bridge.bridge import Bridge, BridgeConfig
from broker_bridge.connection import bridge_client, tls_context
from broker_bridge.gaps import GapTracker, PgLedger, Resender
from broker_bridge.notices import Notifier
from devices.registry import Registry
from devices.revocation import Revoker
from healthiot.settings import Settings
from storage import maintenance as maintenance_metrics
from storage.audit import ANCHOR_EVERY_S, Anchors, Audit, AuditKey
from storage.crypto import KekRing, KeyProvider, LocalKeyFile
from storage.keyring import Keyring
from storage.maintenance import Maintenance, RetentionPolicy
from storage.owner_secrets import OwnerSecrets
from storage.patients import Patients
from storage.record_feed import RecordFeed
from storage.record_links import RecordLinks
from storage.rollups import Rollups
from storage.store import Store

POOL_MAX = 10  # the bridge holds one connection per batch; the API a few per request burst


@dataclass(frozen=True)
class Core:
    pool: asyncpg.Pool
    keyring: Keyring
    store: Store
    registry: Registry
    patients: Patients
    audit: Audit

    async def close(self) -> None:
        """Anchor the audit log's last entries, then close the pool."""
        self.audit.flush()
        await self.pool.close()


async def open_core(dsn: str, password: str, kek_file: Path, *,
                    create_kek: bool = False, owner_keys_dir: Path | None = None,
                    previous_kek_files: tuple[Path, ...] = (),
                    audit_key_file: Path | None = None, audit_anchor_dir: Path | None = None,
                    anchor_every_s: float = ANCHOR_EVERY_S) -> Core:
    """The pool and the stores. Owner secrets live in ``owner_keys_dir``, the audit chain's
    key in ``audit_key_file`` and its anchors in ``audit_anchor_dir`` (defaults: next to the
    KEK); previous KEKs stay readable during a rotation. ``dsn`` names the service role."""
    pool = await asyncpg.create_pool(dsn, password=password, min_size=1, max_size=POOL_MAX,
                                     timeout=10, command_timeout=30)
    provider: KeyProvider = LocalKeyFile(kek_file, create=create_kek)
    if previous_kek_files:
        provider = KekRing(provider, *(LocalKeyFile(f) for f in previous_kek_files))
    owners = OwnerSecrets(owner_keys_dir or kek_file.parent / "owner-keys")
    keyring = Keyring(provider, owners)
    audit = Audit(pool, AuditKey(audit_key_file or kek_file.parent / "audit.key",
                                 create=create_kek),
                  Anchors(audit_anchor_dir or kek_file.parent / "audit-anchors"),
                  anchor_every_s=anchor_every_s)
    return Core(pool, keyring, Store(pool, keyring), Registry(pool), Patients(pool, keyring),
                audit)


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """HTTPS context: TLS 1.2+ with AEAD suites only."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.load_cert_chain(str(cert), str(key))
    return context


async def start_api(core: Core, tokens: TokenService, *, host: str, port: int,
                    tls: ssl.SSLContext, oidc: OidcVerifier | None = None,
                    revoker: Revoker | None = None,
                    cors_origins: tuple[str, ...] = (),
                    record: RecordAccount | None = None,
                    metrics: ApiMetrics | None = None) -> web.AppRunner:
    app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry, core.patients,
                             core.audit, tokens, oidc, record=record), revoker=revoker,
                     cors_origins=cors_origins, metrics=metrics)
    return await serve_api(app, host=host, port=port, tls=tls)


async def serve_api(app: web.Application, *, host: str, port: int, tls: ssl.SSLContext
                    ) -> web.AppRunner:
    """Serve ``app`` over HTTPS until the returned runner is cleaned up; what the HTTP
    parser refuses is answered as a problem document too (api.headers.ApiRunner)."""
    # No access log: who read what is in the audit log, and URLs can carry personal data.
    runner = ApiRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    return runner


def bridge_client_id(settings: Settings) -> str:
    """The configured client id, else one stable per host: a restarted bridge must resume
    its persistent session to get back the messages it had not acked."""
    return settings.bridge_client_id or f"svc-bridge-{socket.gethostname()}"


def new_bridge(core: Core, *, client_id: str, ca_file: Path, cert: Path, key: Path,
               batch_size: int, store: Store | None = None) -> Bridge:
    """The production bridge; ``store`` replaces core's (a benchmark's timing wrapper)."""
    client = bridge_client(client_id, tls_context(ca_file, cert, key),
                           queue_size=batch_size * 4)
    return Bridge(client, store or core.store, core.registry,
                  BridgeConfig(batch_size=batch_size),
                  resender=Resender(GapTracker(), PgLedger(core.pool)), notifier=Notifier())


def oidc_verifier(settings: Settings, session: aiohttp.ClientSession) -> OidcVerifier | None:
    """Clinician sign-in through the configured identity provider, if there is one."""
    if not settings.oidc_issuer:
        return None
    return OidcVerifier(OidcConfig(settings.oidc_issuer, settings.oidc_client_id), session)


def record_tls(settings: Settings) -> ssl.SSLContext:
    """Client TLS towards the record: the system's CAs, or the configured bundle."""
    context = ssl.create_default_context(
        cafile=str(settings.record_ca_file) if settings.record_ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def record_session(settings: Settings) -> aiohttp.ClientSession:
    """An HTTP session for the record's servers, with ``record_tls``."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=record_tls(settings)))


def record_account(core: Core, settings: Settings,
                   session: aiohttp.ClientSession) -> RecordAccount | None:
    """The patients' links to their medical record, if the feed is configured."""
    if not settings.record_feed_url:
        return None
    return RecordAccount(RecordAuthConfig(settings.record_issuer, settings.record_client_id,
                                          settings.record_client_secret,
                                          settings.record_redirect_uri, settings.record_scope),
                         RecordLinks(core.pool, core.keyring), session)


def record_feed(core: Core, settings: Settings,
                session: aiohttp.ClientSession) -> FeedSender | None:
    """The medical-record feed, if an endpoint is configured. ``session`` should use
    ``record_tls``. Raises ModelsError for an unusable models file."""
    account = record_account(core, settings, session)
    if account is None or settings.record_feed_models_file is None:
        return None
    return FeedSender(RecordFeed(core.pool, core.keyring), core.store, core.audit, session,
                      FeedConfig(settings.record_feed_url, settings.record_feed_sender_oid),
                      account, ModelCatalogue.load(settings.record_feed_models_file))


async def serve_metrics(found: CollectorRegistry, host: str, port: int
                        ) -> web.AppRunner | None:
    """Serve ``found`` at http://host:port/metrics (the bridge's helper); None when the
    port is 0 (off)."""
    if not port:
        return None
    return await bridge_health.serve(bridge_health.metrics_app(found), host, port)


def maintenance_registry(job: Maintenance, core: Core) -> CollectorRegistry:
    return maintenance_metrics.registry(lambda: job.stats, lambda: core.store.set_aside_total)


def maintenance(core: Core, settings: Settings) -> Maintenance:
    policy = RetentionPolicy(settings.retention_raw_days, settings.retention_rollups_days,
                             settings.retention_quarantine_days, settings.retention_audit_days,
                             ledger_exact_hours=settings.ledger_exact_hours)
    return Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                       core.audit, policy)
