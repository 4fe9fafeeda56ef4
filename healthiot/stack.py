"""The embedded default stack: its files under var/, and its PostgreSQL and Mosquitto.

Everything secret is generated on first run, owner-only, and reused afterwards; nothing has
a default value in code. The tests build the same stack in a temporary directory.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.tokens import TokenService
from devices.broker_config import BRIDGE_IDENTITY, RENEWER_IDENTITY, REVOKER_IDENTITY
from devices.ca import CertificateAuthority, key_pem, make_csr, new_key, write_private
from healthiot.localservers import MosquittoServer, PostgresServer, reachable_home
from healthiot.settings import Settings
from storage import roles
from storage.migrate import migrate

DB_USER = "healthiot"  # the embedded cluster's superuser: creates the database, migrates
DB_NAME = "healthiot"
SERVER_NAMES = ["localhost", "127.0.0.1", "::1"]


def _secret_text(path: Path) -> str:
    """A random secret stored in ``path``, created on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(24).encode())
    return path.read_text().strip()


@dataclass(frozen=True)
class Materials:
    """Paths of everything the stack's processes need; all exist after ``prepare``."""

    ca: CertificateAuthority
    broker_cert: Path
    broker_key: Path
    bridge_cert: Path
    bridge_key: Path
    api_cert: Path
    api_key: Path
    jwt_key: Path
    kek: Path
    db_password: str
    revoker_cert: Path  # the service identity that ends a revoked device's live session
    revoker_key: Path
    renewer_cert: Path  # the service identity that answers devices' renewal CSRs
    renewer_key: Path
    db_service_password: str  # the services' role (storage/roles.py)
    audit_key: Path
    audit_anchors: Path


def _server_pair(ca: CertificateAuthority, directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    if not (cert.exists() and key.exists()):
        key_bytes, cert_bytes = ca.issue_server(SERVER_NAMES)
        write_private(key, key_bytes)
        cert.write_bytes(cert_bytes)
    return cert, key


def _service_pair(ca: CertificateAuthority, directory: Path, name: str,
                  identity: str) -> tuple[Path, Path]:
    cert, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    if not (cert.exists() and key_file.exists()):
        key = new_key()  # a service, like a device, makes its key and sends a CSR
        write_private(key_file, key_pem(key))
        cert.write_bytes(ca.issue_client(make_csr(key, identity), service=True))
    return cert, key_file


def prepare(settings: Settings) -> Materials:
    """Create (first run) or load the development PKI, keys and secrets under var/."""
    var = settings.var_dir
    ca = CertificateAuthority.load_or_create(var / "pki")
    services = var / "pki" / "services"
    services.mkdir(parents=True, exist_ok=True)
    broker_cert, broker_key = _server_pair(ca, services, "broker")
    api_cert, api_key = _server_pair(ca, services, "api")
    bridge_cert, bridge_key = _service_pair(ca, services, "bridge", BRIDGE_IDENTITY)
    revoker_cert, revoker_key = _service_pair(ca, services, "revoker", REVOKER_IDENTITY)
    renewer_cert, renewer_key = _service_pair(ca, services, "renewer", RENEWER_IDENTITY)
    keys = var / "keys"
    jwt_key = settings.path("jwt_key_file", "keys/jwt-signing.key")
    if not jwt_key.exists():
        keys.mkdir(parents=True, exist_ok=True)
        write_private(jwt_key, key_pem(new_key()))
    kek = settings.path("kek_file", "keys/kek.bin")
    db_password = (settings.database_admin_password
                   or _secret_text(var / "secrets" / "postgres-password"))
    service_password = (settings.database_password
                        or _secret_text(var / "secrets" / "postgres-service-password"))
    audit_key = settings.path("audit_key_file", "keys/audit.key")
    return Materials(ca, broker_cert, broker_key, bridge_cert, bridge_key, api_cert, api_key,
                     jwt_key, kek, db_password, revoker_cert, revoker_key, renewer_cert,
                     renewer_key, service_password, audit_key,
                     settings.path("audit_anchor_dir", "audit-anchors"))


def load_jwt_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The public half of a PEM file holding an EC public or private key."""
    data = path.read_bytes()
    key = (serialization.load_pem_private_key(data, None).public_key()
           if b"PRIVATE KEY" in data else serialization.load_pem_public_key(data))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path} does not hold an EC key")
    return key


def token_service(settings: Settings, signing_key: Path) -> TokenService:
    """Access tokens signed with ``signing_key``; the other configured keys (the next one
    before a rotation, the previous one after) verify too and are published."""
    others = [load_public_key(Path(p.strip()))
              for p in settings.jwt_other_key_files.split(",") if p.strip()]
    return TokenService(load_jwt_key(signing_key), issuer=settings.jwt_issuer,
                        audience=settings.jwt_audience, other_keys=others)


def postgres_server(settings: Settings, materials: Materials) -> PostgresServer:
    # As root, under a directory the postgres user reaches (localservers.reachable_home).
    return PostgresServer(reachable_home(settings.var_dir / "pg") / "data",
                          port=settings.pg_port,
                          user=DB_USER, password=materials.db_password,
                          log_file=settings.var_dir / "log" / "postgres.log",
                          bin_dir=settings.pg_bin_dir or None)


def mosquitto_server(settings: Settings, materials: Materials) -> MosquittoServer:
    return MosquittoServer(reachable_home(settings.var_dir / "mosquitto"),
                           port=settings.mqtt_port,
                           services_port=settings.mqtt_services_port,
                           bind="127.0.0.1", clients_ca=materials.ca.clients_ca_file.read_bytes(),
                           cert=materials.broker_cert.read_bytes(),
                           key=materials.broker_key.read_bytes(),
                           log_file=settings.var_dir / "log" / "mosquitto.log",
                           crl=materials.ca.crl([]))  # re-signed from the registry at start


async def ensure_database(server_dsn: str, password: str, name: str) -> None:
    """Create database ``name`` on the server unless it exists."""
    conn = await asyncpg.connect(server_dsn, password=password, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def service_dsn(settings: Settings) -> str:
    """The embedded database, as the services reach it."""
    return f"postgresql://{roles.SERVICE}@127.0.0.1:{settings.pg_port}/{DB_NAME}"


async def migrate_database(dsn: str, password: str, *, service_password: str | None = None,
                           audit_retention_days: int | None = None) -> list[str]:
    """Migrate as the owner role through the administrator's connection ``dsn``; give the
    service role ``service_password`` when one is passed."""
    conn = await asyncpg.connect(dsn, password=password, timeout=10)
    try:
        retention = (dt.timedelta(days=audit_retention_days)
                     if audit_retention_days is not None else None)
        applied = await migrate(conn, audit_retention=retention)
        if service_password is not None:
            await roles.set_password(conn, roles.SERVICE, service_password)
        return applied
    finally:
        await conn.close()
