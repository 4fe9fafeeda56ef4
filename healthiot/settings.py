"""Settings: one frozen dataclass built once from the environment, then passed down.

Every field reads ``HEALTHIOT_<FIELD>``; a secret may instead be read from the file named by
``HEALTHIOT_<FIELD>_FILE`` (Docker and compose secrets). Outside development a secret must be
set explicitly: there is no working default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.headers import cors_origins
from healthiot.errors import SettingsError

ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PREFIX = "HEALTHIOT_"


def _doc(text: str, *, secret: bool = False) -> dict[str, Any]:
    return {"doc": text, "secret": secret}


@dataclass(frozen=True)
class Settings:
    environment: str = field(default="development", metadata=_doc(
        "development or production; production refuses generated or default secrets"))
    var_dir: Path = field(default=Path("var"), metadata=_doc(
        "state of the embedded stack: database cluster, broker, PKI, keys, logs"))
    log_level: str = field(default="INFO", metadata=_doc("DEBUG, INFO, WARNING or ERROR"))
    log_format: str = field(default="text", metadata=_doc("text (for people) or json"))

    database_url: str = field(default="", metadata=_doc(
        "postgresql://healthiot_service@host:port/db the services connect as (the service "
        "role: rows only, no schema, append-only audit); empty: the embedded cluster"))
    database_password: str = field(default="", repr=False, metadata=_doc(
        "password for database_url (embedded: generated under var/secrets)", secret=True))
    database_admin_url: str = field(default="", metadata=_doc(
        "postgresql://user@host:port/db that `db migrate` connects as: a superuser, which "
        "makes the roles, sets the service password and migrates as healthiot_owner"))
    database_admin_password: str = field(default="", repr=False, metadata=_doc(
        "password for database_admin_url, read by `db migrate` only", secret=True))
    pg_port: int = field(default=54329, metadata=_doc("port of the embedded PostgreSQL"))
    pg_bin_dir: str = field(default="", metadata=_doc(
        "directory of initdb/postgres when not on PATH or in /usr/lib/postgresql/*/bin"))

    mqtt_host: str = field(default="localhost", metadata=_doc(
        "broker host name, as written in its certificate"))
    mqtt_port: int = field(default=8883, metadata=_doc("broker mTLS port for devices"))
    mqtt_services_port: int = field(default=8884, metadata=_doc(
        "broker mTLS port for the backend's services (bridge, renewer, revoker), on an "
        "address devices cannot reach; there, unlike on mqtt_port, a client chooses its id"))
    mqtt_ca_file: Path | None = field(default=None, metadata=_doc(
        "CA that signed the broker certificate (embedded: var/pki/ca.pem)"))
    mqtt_cert_file: Path | None = field(default=None, metadata=_doc(
        "the bridge's client certificate (embedded: issued on first run)"))
    mqtt_key_file: Path | None = field(default=None, metadata=_doc(
        "the bridge's client key", secret=True))
    bridge_client_id: str = field(default="", metadata=_doc(
        "MQTT client id of this bridge replica (default svc-bridge-<hostname>); keep it "
        "stable so the persistent session survives restarts"))
    bridge_batch_size: int = field(default=500, metadata=_doc("messages per stored batch"))
    bridge_workers: int = field(default=0, metadata=_doc(
        "bridge worker processes of `healthiot bridge` (unless --workers says) and of "
        "`healthiot run` (its own and the rest beside it); 0: one per core"))
    bridge_health_host: str = field(default="127.0.0.1", metadata=_doc(
        "listen address of the bridge's plain-HTTP /healthz and /metrics (loopback: probes "
        "only)"))
    bridge_health_port: int = field(default=9108, metadata=_doc(
        "port of the bridge's /healthz and /metrics; 0 turns them off"))

    api_host: str = field(default="127.0.0.1", metadata=_doc("API listen address"))
    api_port: int = field(default=8443, metadata=_doc("API HTTPS port"))
    api_metrics_host: str = field(default="127.0.0.1", metadata=_doc(
        "listen address of the API's plain-HTTP /metrics (requests by route and status, "
        "latency), apart from the API itself (loopback: the host's Prometheus only)"))
    api_metrics_port: int = field(default=9110, metadata=_doc(
        "port of the API's /metrics; 0 turns it off"))
    api_cert_file: Path | None = field(default=None, metadata=_doc(
        "API server certificate (embedded: issued on first run)"))
    api_key_file: Path | None = field(default=None, metadata=_doc(
        "API server key", secret=True))
    jwt_key_file: Path | None = field(default=None, metadata=_doc(
        "ES256 private key that signs access tokens (embedded: generated)", secret=True))
    jwt_issuer: str = field(default="https://localhost:8443", metadata=_doc(
        "iss of access tokens"))
    jwt_audience: str = field(default="healthiot-api", metadata=_doc("aud of access tokens"))
    jwt_other_key_files: str = field(default="", metadata=_doc(
        "comma-separated PEM files of keys that verify and are published beside the signing "
        "key: the next key before a rotation, the previous one for 15 minutes after"))

    kek_file: Path | None = field(default=None, metadata=_doc(
        "key-encryption key file (32 bytes, owner-only; embedded: generated)", secret=True))
    audit_key_file: Path | None = field(default=None, metadata=_doc(
        "key of the audit log's HMAC chain (32 bytes, owner-only; embedded: generated in "
        "var/keys), kept out of the database so that its owner cannot re-chain", secret=True))
    audit_anchor_dir: Path | None = field(default=None, metadata=_doc(
        "where the audit chain's head is appended, outside the database (embedded: "
        "var/audit-anchors); `audit verify` needs it: keep it apart from the database"))

    owner_keys_dir: Path | None = field(default=None, metadata=_doc(
        "per-patient secrets, half of each data key, outside the database (embedded: "
        "var/keys/owner-keys); erasure deletes them, which defeats old dumps", secret=True))
    retention_raw_days: int = field(default=365, metadata=_doc(
        "days raw samples are kept (whole partitions dropped after)"))
    retention_rollups_days: int = field(default=1825, metadata=_doc(
        "days hourly and daily rollups are kept"))
    retention_quarantine_days: int = field(default=30, metadata=_doc(
        "days quarantined payloads are kept for diagnosis"))
    retention_audit_days: int = field(default=1825, metadata=_doc(
        "days the audit log is kept (cut from its oldest end; the chain stays checkable); "
        "stored in the database by `db migrate`: the services cannot shorten it"))
    maintenance_metrics_host: str = field(default="127.0.0.1", metadata=_doc(
        "listen address of maintenance's plain-HTTP /metrics (passes, retention runs and "
        "rows removed, segments set aside, failed steps)"))
    maintenance_metrics_port: int = field(default=9111, metadata=_doc(
        "port of maintenance's /metrics; 0 turns it off"))
    ledger_exact_hours: int = field(default=24, metadata=_doc(
        "hours the message ledger keeps a row per message (payload digest, times, units); "
        "after that, runs of sequence numbers with their counts"))
    maintenance_interval_s: int = field(default=300, metadata=_doc(
        "seconds between maintenance passes (partitions, rollups, compaction, retention)"))

    record_feed_url: str = field(default="", metadata=_doc(
        "FHIR endpoint the medical-record feed posts transaction Bundles to; empty: no feed"))
    record_feed_sender_oid: str = field(default="", metadata=_doc(
        "our OID, the identifier system of what the feed creates (needed with the feed)"))
    record_feed_interval_s: int = field(default=60, metadata=_doc(
        "seconds between two feed cycles (collect new readings, post what is due)"))
    record_feed_models_file: Path | None = field(default=None, metadata=_doc(
        "JSON file describing each device model for the record (manufacturer, model number, "
        "11073 specialisation, which readings are fed and with how many decimals); needed "
        "with the feed"))
    record_issuer: str = field(default="", metadata=_doc(
        "OpenID Connect issuer of the medical record's authorisation server, where patients "
        "link their record (needed with the feed)"))
    record_client_id: str = field(default="", metadata=_doc(
        "our client id at the record's authorisation server"))
    record_client_secret: str = field(default="", repr=False, metadata=_doc(
        "our client secret there (client_secret_basic); no default", secret=True))
    record_redirect_uri: str = field(default="", metadata=_doc(
        "our redirect URI registered with the record: https://<api>/v1/record-link/callback"))
    record_scope: str = field(default="openid", metadata=_doc(
        "scopes asked when a patient links their record, space-separated"))
    record_ca_file: Path | None = field(default=None, metadata=_doc(
        "CA bundle to trust for the record's servers instead of the system's (a test "
        "environment); empty: the system's"))
    oidc_issuer: str = field(default="", metadata=_doc(
        "OpenID Connect issuer for clinician sign-in (Pro Santé Connect); empty: off"))
    oidc_client_id: str = field(default="", metadata=_doc(
        "our client id at that issuer: the audience of its ID tokens"))
    api_cors_origins: str = field(default="", metadata=_doc(
        "web origins allowed to call the API from a browser, exactly (scheme://host[:port], "
        "comma-separated); empty: CORS off"))

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise SettingsError(f"HEALTHIOT_ENVIRONMENT must be one of {ENVIRONMENTS}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"HEALTHIOT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in ("text", "json"):
            raise SettingsError("HEALTHIOT_LOG_FORMAT must be text or json")
        if min(self.retention_raw_days, self.retention_rollups_days,
               self.retention_quarantine_days, self.retention_audit_days) < 1:
            raise SettingsError("retention periods are whole days, at least 1")
        if self.ledger_exact_hours < 1:
            raise SettingsError("HEALTHIOT_LEDGER_EXACT_HOURS must be at least 1")
        if self.record_feed_url:
            needed = ("record_feed_sender_oid", "record_feed_models_file", "record_issuer",
                      "record_client_id", "record_client_secret", "record_redirect_uri")
            missing_feed = [env_name(n) for n in needed if not getattr(self, n)]
            if missing_feed:
                raise SettingsError("HEALTHIOT_RECORD_FEED_URL needs " + ", ".join(missing_feed))
        try:
            cors_origins(self.api_cors_origins)
        except ValueError as exc:
            raise SettingsError(f"HEALTHIOT_API_CORS_ORIGINS: {exc}") from None
        if bool(self.oidc_issuer) != bool(self.oidc_client_id):
            raise SettingsError("HEALTHIOT_OIDC_ISSUER and HEALTHIOT_OIDC_CLIENT_ID go together")
        if self.environment == "production":
            plain = [u for u in (self.record_feed_url, self.oidc_issuer, self.record_issuer,
                                 self.record_redirect_uri)
                     if u and not u.startswith("https://")]
            if plain:
                raise SettingsError(f"production talks to other systems over https only: {plain}")
            missing = [env_name(f.name) for f in dataclasses.fields(self)
                       if f.metadata.get("secret") and not getattr(self, f.name)
                       and (f.name != "record_client_secret" or self.record_feed_url)]
            if not self.database_url:
                missing.append(env_name("database_url"))
            if missing:
                raise SettingsError("production needs explicit settings: " + ", ".join(missing))

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    def path(self, name: str, default: str) -> Path:
        """The path setting ``name``, or ``default`` under the var directory."""
        value = getattr(self, name)
        return Path(value) if value else self.var_dir / default


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def documented() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README table's source."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else ""
        rows.append((env_name(f.name), "" if default is None else str(default),
                     f.metadata["doc"]))
    return rows


def accepted_variables() -> set[str]:
    """Every environment variable the settings read, ``_FILE`` variants included."""
    fields = dataclasses.fields(Settings)
    return {env_name(f.name) for f in fields} | {env_name(f.name) + "_FILE" for f in fields
                                                   if f.metadata.get("secret") and f.type == "str"}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``environ`` (default: the process environment)."""
    environ = os.environ if environ is None else environ
    unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in
                     accepted_variables() and not k.startswith(PREFIX + "TEST_"))
    if unknown:
        raise SettingsError(f"unknown settings (typo?): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(Settings)}
    for name, hint in hints.items():
        raw = _read(environ, env_name(name))
        if raw is None:
            continue
        try:
            if "int" in str(hint):
                values[name] = int(raw)
            elif "Path" in str(hint):
                values[name] = Path(raw) if raw else None
            else:
                values[name] = raw
        except ValueError:
            raise SettingsError(f"{env_name(name)} must be an integer") from None
    return Settings(**values)


def _read(environ: Mapping[str, str], name: str) -> str | None:
    if name + "_FILE" in environ:  # secrets as files: nothing in the process environment
        try:
            return Path(environ[name + "_FILE"]).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {exc.filename}") from None
    return environ.get(name)
