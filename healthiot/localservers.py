"""Child PostgreSQL and Mosquitto servers for the embedded stack and the test suite.

Both refuse to run as root (PostgreSQL) or drop to their own user (Mosquitto), so when we are
root the files they need are handed to those users. Children get PR_SET_PDEATHSIG: if this
process dies, they die with it instead of holding the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import hashlib
import os
import pwd
import random
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncpg

from devices.broker_config import BrokerFiles, ServicesListener, mosquitto_conf
from devices.broker_plugin import build_plugin
from healthiot import timescaledb
from healthiot.errors import ServerUnavailable

START_TIMEOUT_S = 60.0  # initdb plus first start on a loaded 2-core machine
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child after setuid (which would clear it), before exec.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (children started afterwards,
    Mosquitto included, inherit it); returns the soft limit now in force. The soft limit
    goes up to the hard one; root may raise the hard one too (up to fs.nr_open), as a
    service manager would (systemd LimitNOFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard < wanted and running_as_root():
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, ceiling),) * 2)
            return min(wanted, ceiling)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return min(wanted, hard)


def running_as_root() -> bool:
    return os.geteuid() == 0


def find_binary(name: str, *, env_dir: str | None = None) -> str:
    """Find a server binary: ``env_dir`` first, then PATH, then Debian's usual places."""
    candidates = [os.path.join(env_dir, name)] if env_dir else []
    found = shutil.which(name)
    if found:
        candidates.append(found)
    # Debian keeps PostgreSQL's binaries out of PATH, one directory per major version.
    candidates += sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                         key=lambda p: int(p.split("/")[4]), reverse=True)
    candidates += [f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"]
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise ServerUnavailable(
        f"{name} not found. Install it with: apt-get install -y "
        f"{'mosquitto' if name == 'mosquitto' else 'postgresql'}")


def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServerUnavailable(
            f"running as root needs the system user {name!r}, which the Debian package "
            "creates: apt-get install -y postgresql mosquitto") from None


def give_to(user: str, *paths: Path) -> None:
    """As root, hand ``paths`` (recursively) to ``user``; otherwise do nothing."""
    if not running_as_root():
        return
    account = _account(user)
    for top in paths:
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            os.chown(path, account.pw_uid, account.pw_gid)


def traversable(path: Path) -> bool:
    """True when every existing directory above ``path`` lets other users through (o+x);
    those still to be made get the default mode, which does."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents
               if parent.exists())


# Where, as root, a server's files go when its user cannot reach var/ (a checkout under a
# 0700 /root, where a root user on a fresh server clones first): the FHS place for state.
SERVER_STATE_ROOT = Path("/var/lib/healthiot")


def reachable_home(link: Path, *, state_root: Path = SERVER_STATE_ROOT) -> Path:
    """The directory a server run as another user keeps its files in, for ``link``
    (var/pg, var/mosquitto): ``link`` itself unless we are root and a parent is closed to
    other users. Then a directory under ``state_root`` named after the absolute path of
    var/ (each checkout its own, found again by the next run), with ``link`` a symlink
    to it, so that our own tools still find the files under var/. A real directory left at
    ``link`` by an earlier run is moved there first. No mode of the user's directories is
    changed."""
    if not running_as_root():
        return link
    if link.is_symlink():
        return link.resolve()
    if traversable(link):
        return link
    var = link.parent.resolve()
    digest = hashlib.sha256(str(var).encode()).hexdigest()[:16]  # one per var/, all servers
    checkout = state_root / digest
    target = checkout / link.name
    state_root.mkdir(mode=0o755, parents=True, exist_ok=True)
    # 0711: the servers' users pass through, nobody lists which checkouts exist.
    checkout.mkdir(mode=0o711, exist_ok=True)
    os.chmod(checkout, 0o711)  # noqa: S103 (traversal only: the servers must pass)
    (checkout / "var").write_text(f"{var}\n")  # whose files these are
    if link.exists() and not target.exists():
        shutil.move(link, target)
    elif link.exists():
        raise ServerUnavailable(f"both {link} and {target} exist: keep one, remove the other")
    target.mkdir(mode=0o711, exist_ok=True)  # the server makes or locks what is inside
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return target


def _check_traversable(path: Path, user: str) -> None:
    # A server running as another user must be able to reach its own directory.
    if not running_as_root():
        return
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise ServerUnavailable(
                f"{parent} is not traversable by the {user!r} user that must run the server "
                f"under {path}; use a directory elsewhere (chmod o+x {parent})")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


# Ports this process has handed out: a port is free again once its probe socket closes,
# so without this two servers set up side by side (a run's seven ports) could be given
# the same one (about one e2e test in fifty did).
_HANDED_OUT: set[int] = set()


def _hand_out(port: int) -> int:
    _HANDED_OUT.add(port)
    return port


def free_port() -> int:
    """A free port of the ephemeral range, never one this process handed out before."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            return _hand_out(port)
    raise ServerUnavailable("no free port left in the ephemeral range")


def stable_port(rng: random.Random | None = None) -> int:
    """A free port below the ephemeral range, for a server that will be restarted on it;
    never one this process handed out before.

    A client retrying connect() to a dead port inside the ephemeral range can be given that
    very port as its own and connect to itself (TCP simultaneous open): the restarted server
    then finds its port taken. Below the range no outgoing connection takes it."""
    low = _ephemeral_low()
    rng = rng or random.Random()
    for _ in range(1000):
        port = rng.randrange(low // 2, low)
        if port not in _HANDED_OUT and port_is_free(port):
            return _hand_out(port)
    raise ServerUnavailable("no free port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class _Child:
    """A supervised child process with its output in a log file."""

    def __init__(self, name: str, log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], *, user: str | None) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                user=user, preexec_fn=_die_with_parent,
                start_new_session=True)  # Ctrl-C reaches us; we stop the children in order

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServerUnavailable(f"{self.name} exited with status {self.process.returncode}; "
                                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}")

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, first_signal: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(first_signal)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PostgresServer:
    """A PostgreSQL cluster of our own: created with initdb, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, *, port: int, user: str, password: str,
                 log_file: Path, bin_dir: str | None = None) -> None:
        self.data_dir, self.port, self.user, self.password = data_dir, port, user, password
        self.bin_dir = bin_dir
        self._child = _Child("postgres", log_file)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def initdb(self) -> None:
        """Create the cluster unless it exists; the superuser gets ``password`` (SCRAM)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        run_as = "postgres" if running_as_root() else None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        try:
            if run_as:
                _check_traversable(self.data_dir, run_as)
                give_to(run_as, self.data_dir, pwfile)
            result = subprocess.run(
                [find_binary("initdb", env_dir=self.bin_dir), "-D", str(self.data_dir),
                 "-U", self.user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                 "-E", "UTF8", "--locale=C", "--no-instructions"],
                capture_output=True, user=run_as, check=False, timeout=START_TIMEOUT_S)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServerUnavailable("initdb failed:\n" + result.stderr.decode(errors="replace"))

    async def start(self) -> None:
        """Start the server and wait until it accepts our login."""
        if not port_is_free(self.port):
            raise ServerUnavailable(f"port {self.port} is taken: is another stack running? "
                                    "Choose another with HEALTHIOT_PG_PORT")
        self.initdb()
        postgres = find_binary("postgres", env_dir=self.bin_dir)
        self._child.spawn(
            [postgres, "-D", str(self.data_dir),
             "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", "unix_socket_directories=", "-c", "max_connections=200",
             "-c", "password_encryption=scram-sha-256",
             *timescaledb.server_options(postgres)],  # preloaded when installed whole
            user="postgres" if running_as_root() else None)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._child.check_alive()
            try:
                conn = await asyncpg.connect(self.dsn, password=self.password, timeout=5)
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresError,
                    TimeoutError):
                if time.monotonic() > deadline:
                    raise ServerUnavailable(
                        f"postgres did not accept connections in {START_TIMEOUT_S}s; see "
                        f"{self._child.log_file}:\n{_tail(self._child.log_file)}") from None
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    def stop(self) -> None:
        self._child.stop(signal.SIGINT)  # "fast" shutdown: sessions ended, data checkpointed

    def check_alive(self) -> None:
        self._child.check_alive()


class MosquittoServer:
    """A Mosquitto broker with our generated configuration: an mTLS listener for devices
    on ``port``, one for the backend's services on ``services_port``, nothing else."""

    def __init__(self, directory: Path, *, port: int, services_port: int, bind: str,
                 clients_ca: bytes, cert: bytes, key: bytes, log_file: Path,
                 crl: bytes | None = None, own_log_file: bool = False,
                 autosave_s: int = 30) -> None:
        self.directory, self.port, self.bind = directory, port, bind
        self.autosave_s = autosave_s  # how often the broker writes its sessions to disk
        self.services_port = services_port
        # Besides its output in log_file, a log the broker writes itself (log_dest file), as
        # a deployment's broker does for the takeover watcher.
        self.own_log_file = self.directory / "broker.log" if own_log_file else None
        self._material = {"clients-ca.pem": clients_ca, "broker.pem": cert, "broker.key": key}
        self._crl = crl  # the first CRL; later ones are written to crl_file, then reload()
        self._child = _Child("mosquitto", log_file)

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def crl_file(self) -> Path:
        """Where the broker reads the device CA's CRL (named in the config if it exists)."""
        return self.directory / "device-ca.crl"

    @property
    def log_file(self) -> Path:
        """The broker's log, connection messages included (devices/takeover.py reads it)."""
        return self._child.log_file

    @property
    def pid_file(self) -> Path:
        """Written by us (Mosquitto writes one only as a daemon): `healthiot devices revoke`
        finds the broker to reload through it."""
        return self.directory / "mosquitto.pid"

    def reload(self) -> None:
        """SIGHUP: Mosquitto reloads its certificates and CRL (live sessions stay up)."""
        self._child.send_signal(signal.SIGHUP)

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for name, data in self._material.items():
            path = self.directory / name
            path.write_bytes(data)
            os.chmod(path, 0o600)
        if self._crl is not None and not self.crl_file.exists():
            self.crl_file.write_bytes(self._crl)
            os.chmod(self.crl_file, 0o644)  # public, and rewritten by the CRL publisher
        files = BrokerFiles(clients_ca=self.directory / "clients-ca.pem",
                            cert=self.directory / "broker.pem",
                            key=self.directory / "broker.key",
                            plugin=self.directory / "healthiot_acl.so",
                            persistence_dir=self.directory / "data",
                            crl=self.crl_file,
                            log=self.own_log_file)
        files.persistence_dir.mkdir(exist_ok=True)
        shutil.copyfile(build_plugin(), files.plugin)
        self.config_file.write_text(mosquitto_conf(
            files, bind=self.bind, port=self.port,
            services=ServicesListener(self.bind, self.services_port),
            autosave_s=self.autosave_s))
        if running_as_root():
            # Mosquitto runs as "mosquitto", which must read its keys and write its state.
            _check_traversable(self.directory, "mosquitto")
            give_to("mosquitto", self.directory)

    async def start(self) -> None:
        """Start the broker and wait until its listener accepts TCP connections."""
        for port, variable in ((self.port, "HEALTHIOT_MQTT_PORT"),
                               (self.services_port, "HEALTHIOT_MQTT_SERVICES_PORT")):
            if not port_is_free(port, self.bind):
                raise ServerUnavailable(f"port {port} is taken: is another stack running? "
                                        f"Choose another with {variable}")
        self.write_config()
        # As root, start it as "mosquitto" ourselves: its own privilege drop would also clear
        # the parent-death signal that keeps it from outliving us.
        self._child.spawn([find_binary("mosquitto"), "-c", str(self.config_file)],
                          user="mosquitto" if running_as_root() else None)
        if self._child.process is not None:
            self.pid_file.write_text(f"{self._child.process.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while port_is_free(self.port, self.bind) or port_is_free(self.services_port, self.bind):
            self._child.check_alive()
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"mosquitto did not listen in {START_TIMEOUT_S}s:\n"
                                        f"{_tail(self._child.log_file)}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._child.stop(signal.SIGTERM)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop without a clean shutdown (fault tests)."""
        self._child.stop(signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def check_alive(self) -> None:
        self._child.check_alive()
