"""The test harness: real servers, started by the suite itself.

PostgreSQL: a throwaway cluster from initdb (as the ``postgres`` user when we are root), or
the server named by HEALTHIOT_TEST_DATABASE_URL (+ HEALTHIOT_TEST_DATABASE_PASSWORD). Each
test gets a fresh database cloned from a migrated template, and reaches it as the services
do: as the service role (storage/roles.py), the superuser being for migrations and for tests
that act as an attacker. Mosquitto: always our own, with
the generated mTLS-only configuration. A server that cannot be had fails the tests that need
it, with the reason: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import settings

from api import passwords, totp
from broker_bridge.bridge import Bridge
from broker_bridge.connection import connect_properties
from devices.broker_config import BRIDGE_IDENTITY
from devices.ca import (
    DEVICE_VALIDITY,
    CertificateAuthority,
    key_pem,
    make_csr,
    new_key,
    write_private,
)
from devices.identity import new_device_id
from firmware_sim.device import Broker, Flash, SimulatedDevice, Watch, enrol
from healthiot.errors import ServerUnavailable
from healthiot.localservers import MosquittoServer, PostgresServer, free_port, stable_port
from healthiot.services import Core, new_bridge, open_core
from healthiot.stack import SERVER_NAMES
from storage import partitioning, roles
from storage.migrate import migrate

# No per-example deadline: the property tests run late in a process that holds servers
# and garbage, where one collection pause of a quarter second made Hypothesis fail a test.
settings.register_profile("healthiot", deadline=None)
settings.load_profile("healthiot")

TEMPLATE_DB = "healthiot_template"
_counter = itertools.count()


@dataclass(frozen=True)
class Database:
    """How to reach a database: ``dsn`` and ``password`` as the service role (pg_server's:
    as the administrator), ``admin_*`` as a superuser."""

    dsn: str
    password: str
    admin_dsn: str = ""
    admin_password: str = ""
    service_password: str = ""  # pg_server's: the one the service role was given


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    directory: Path
    bridge_cert: Path
    bridge_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int  # the devices' listener
    server: MosquittoServer

    @property
    def services_port(self) -> int:
        """The listener of the bridge, renewer and revoker (they choose their client ids)."""
        return self.server.services_port


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Traversable by the postgres and mosquitto users when we are root; removed at the end.
    path = Path(tempfile.mkdtemp(prefix="healthiot-tests-"))
    os.chmod(path, 0o755)  # noqa: S103 (the servers' users must traverse it)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_server(workdir: Path) -> AsyncIterator[Database]:
    url = os.environ.get("HEALTHIOT_TEST_DATABASE_URL")
    if url:
        admin = os.environ.get("HEALTHIOT_TEST_DATABASE_PASSWORD", "")
        yield await _with_roles(Database(url, admin, url, admin))
        return
    password = secrets.token_urlsafe(16)
    server = PostgresServer(workdir / "pg" / "data", port=free_port(), user="healthiot",
                            password=password, log_file=workdir / "pg" / "postgres.log",
                            bin_dir=os.environ.get("HEALTHIOT_PG_BIN_DIR"))
    try:
        await server.start()
    except ServerUnavailable as exc:
        pytest.fail(f"the tests need PostgreSQL and could not start one: {exc}", pytrace=False)
    try:
        yield await _with_roles(Database(server.dsn, password, server.dsn, password))
    finally:
        server.stop()


async def _with_roles(server: Database) -> Database:
    """The owner and service roles on the server, the latter with a fresh password."""
    service_password = secrets.token_urlsafe(16)
    conn = await asyncpg.connect(server.dsn, password=server.password, timeout=10)
    try:
        await roles.ensure_roles(conn)
        await roles.set_password(conn, roles.SERVICE, service_password)
    finally:
        await conn.close()
    return dataclasses.replace(server, service_password=service_password)


@pytest.fixture(scope="session")
async def db_template(pg_server: Database) -> str:
    """A migrated database that each test's database is cloned from."""
    try:
        conn = await asyncpg.connect(pg_server.dsn, password=pg_server.password, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"cannot reach the test PostgreSQL at {pg_server.dsn}: {exc}",
                    pytrace=False)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(_with_db(pg_server.dsn, TEMPLATE_DB),
                                 password=pg_server.password)
    try:
        await migrate(conn)
        _ENGINES[pg_server.dsn] = await partitioning.mode(conn)
    finally:
        await conn.close()
    _check_engine(_ENGINES[pg_server.dsn])
    await _seal_template(pg_server, TEMPLATE_DB)
    return TEMPLATE_DB


# The partitioning engine of each test server's template: 'native' or 'timescaledb'.
_ENGINES: dict[str, str] = {}


def _check_engine(found: str) -> None:
    """HEALTHIOT_TEST_ENGINE names the engine a pass means to test (make test-timescaledb
    sets it): a server that fell back to another fails the pass rather than test the wrong
    thing green."""
    wanted = os.environ.get("HEALTHIOT_TEST_ENGINE")
    if wanted and wanted != found:
        pytest.fail(f"HEALTHIOT_TEST_ENGINE={wanted} but the test server gave {found}: is "
                    "TimescaleDB installed whole and preloaded there?", pytrace=False)


async def _seal_template(pg_server: Database, name: str) -> None:
    """Make the template non-connectable and end any session in it. TimescaleDB's
    background-worker scheduler connects to every database that allows it, and CREATE
    DATABASE ... TEMPLATE fails while anyone is connected to the template."""
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = $1 AND pid <> pg_backend_pid()", name)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def db_engine(pg_server: Database, db_template: str) -> str:
    """The partitioning engine the test databases use: 'native' or 'timescaledb'."""
    return _ENGINES[pg_server.dsn]


def _with_db(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + name


def _as_user(dsn: str, user: str) -> str:
    scheme, _, rest = dsn.partition("://")
    return f"{scheme}://{user}@{rest.rpartition('@')[2]}"


@pytest.fixture
async def database(pg_server: Database, db_template: str) -> AsyncIterator[Database]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {db_template}")
    finally:
        await admin.close()
    admin_dsn = _with_db(pg_server.dsn, name)
    yield Database(_as_user(admin_dsn, roles.SERVICE), pg_server.service_password, admin_dsn,
                   pg_server.password)
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pki(workdir: Path) -> Pki:
    """The development CA plus a broker/API server certificate and the bridge's identity."""
    directory = workdir / "pki"
    ca = CertificateAuthority.load_or_create(directory)
    key_bytes, cert_bytes = ca.issue_server(SERVER_NAMES)
    write_private(directory / "server.key", key_bytes)
    (directory / "server.pem").write_bytes(cert_bytes)
    key = new_key()
    write_private(directory / "bridge.key", key_pem(key))
    (directory / "bridge.pem").write_bytes(
        ca.issue_client(make_csr(key, BRIDGE_IDENTITY), service=True))
    return Pki(ca, directory, directory / "bridge.pem", directory / "bridge.key",
               directory / "server.pem", directory / "server.key")


def mosquitto(workdir: Path, pki: Pki, name: str, **options: Any) -> MosquittoServer:
    """A broker of our generated configuration in ``workdir/name``, on a free port, logging
    to ``workdir/name.log``; not started. ``options`` go to MosquittoServer."""
    # A stable port: fault tests restart brokers on theirs (see stable_port).
    options.setdefault("services_port", stable_port())
    return MosquittoServer(workdir / name, port=stable_port(), bind="127.0.0.1",
                           clients_ca=pki.ca.clients_ca_file.read_bytes(),
                           cert=pki.server_cert.read_bytes(), key=pki.server_key.read_bytes(),
                           log_file=workdir / f"{name}.log", **options)


async def start_mosquitto(server: MosquittoServer) -> None:
    """Start ``server``, or fail the test with the reason (never skip it)."""
    try:
        await server.start()
    except ServerUnavailable as exc:
        pytest.fail(f"the tests need Mosquitto and could not start one: {exc}", pytrace=False)


@contextlib.asynccontextmanager
async def running_broker(workdir: Path, pki: Pki, name: str) -> AsyncIterator[BrokerAddress]:
    """A Mosquitto of our generated configuration, started, and stopped after."""
    server = mosquitto(workdir, pki, name)
    await start_mosquitto(server)
    try:
        yield BrokerAddress("localhost", server.port, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def broker(workdir: Path, pki: Pki) -> AsyncIterator[BrokerAddress]:
    async with running_broker(workdir, pki, "mosquitto") as address:
        yield address


@pytest.fixture
async def core(database: Database, tmp_path: Path) -> AsyncIterator[Core]:
    """Pool, keyring and stores on the test's own database."""
    opened = await open_core(database.dsn, database.password, tmp_path / "kek.bin",
                             create_kek=True)
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None], name: str,
                        ready: asyncio.Event) -> AsyncIterator[None]:
    """Run ``work`` as a task for the body once ``ready`` is set (15 s at most); cancel it
    after, and fail the test if it crashed meanwhile, rather than let a dead service pass."""
    task = asyncio.create_task(work, name=name)
    await asyncio.wait_for(ready.wait(), 15)
    try:
        yield
    finally:
        crashed = task.done() and not task.cancelled() and task.exception()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if crashed:
        raise AssertionError(f"{name} crashed during the test") from crashed


@contextlib.asynccontextmanager
async def running_bridge(core: Core, broker: BrokerAddress, pki: Pki, name: str
                         ) -> AsyncIterator[Bridge]:
    """A bridge consuming from ``broker``, connected and subscribed; its session is ended
    after, or it keeps a share of the next tests' data."""
    running = new_bridge(core, client_id=f"svc-bridge-{name}-{next(_counter)}",
                         ca_file=pki.ca.ca_file, cert=pki.bridge_cert, key=pki.bridge_key,
                         batch_size=100)
    ready = asyncio.Event()
    try:
        async with in_background(running.run(broker.host, broker.services_port,
                                              connect_properties(200), ready),
                                 "the bridge", ready):
            yield running
    finally:
        await running.close(end_session=True)


@pytest.fixture
async def bridge(core: Core, broker: BrokerAddress, pki: Pki) -> AsyncIterator[Bridge]:
    """A bridge consuming from the test broker, connected and subscribed."""
    async with running_bridge(core, broker, pki, "test") as running:
        yield running


async def new_patient(core: Core, username: str) -> tuple[uuid.UUID, str, bytes]:
    """A patient with a random password and TOTP secret: (id, password, secret)."""
    password, secret = secrets.token_urlsafe(16), totp.new_secret()
    patient = await core.patients.create(
        username, await asyncio.to_thread(passwords.hash_password, password), secret)
    return patient.id, password, secret


D = TypeVar("D", bound=SimulatedDevice)


async def new_device(
        core: Core, pki: Pki, broker: BrokerAddress, directory: Path,
        patient_id: uuid.UUID | None, model: type[D], *,
        validity: dt.timedelta = DEVICE_VALIDITY, **options: Any) -> D:
    """A simulated ``model`` that made its key, got a certificate valid for ``validity``
    and is registered (paired when ``patient_id`` is given)."""
    device_id = new_device_id(model.model)
    flash = Flash(directory / device_id)

    async def issue(csr: bytes) -> bytes:
        return await asyncio.to_thread(pki.ca.issue_client, csr, validity=validity)

    await enrol(flash, device_id, issue)
    await core.registry.register(device_id, model=model.model, serial=device_id,
                                 cert_pem=flash.cert_file.read_bytes(), patient_id=patient_id)
    return model(device_id, flash, Broker(broker.host, broker.port, pki.ca.ca_file),
                 **options)


async def new_watch(core: Core, pki: Pki, broker: BrokerAddress, directory: Path,
                    patient_id: uuid.UUID | None) -> Watch:
    """A simulated watch that made its key, got its certificate and is registered."""
    return await new_device(core, pki, broker, directory, patient_id, Watch, interval_s=1.0)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)
