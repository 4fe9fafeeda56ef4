"""Client-id takeover: detected in the broker's connection log, recorded and reported.

MQTT gives a client id one live connection: a second CONNECT under the same id closes the
first (MQTT v5 DISCONNECT 0x8E, "session taken over"). Mosquitto cannot tie the client id
to the certificate with a check (certificate logins skip the authentication plugins), so
the devices' listener imposes it instead (``use_username_as_clientid``,
devices/broker_config.py): there, a device gets its CN as client id whatever it asks for,
and cannot take over another's. The services' listener lets clients choose their ids (each
bridge worker its own); it is meant to be out of devices' reach, and the broker's plugin
gives a device connected there under a foreign id nothing at all. Cutting another device
off from there is still possible, and must not go unnoticed.

The only place where the broker says which certificate connected under which client id is
its connection log (``connection_messages true``)::

    <time>: Client watch-a already connected, closing old connection.
    <time>: New client connected from 10.0.0.7:50412 as watch-a (p5, c1, k30, u'watch-b').

So a watcher follows that log: a device identity under a client id that is not its own, or
a service under a device's id, is recorded (table client_id_takeovers), counted
(Prometheus counter) and logged as a WARNING with ids only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from devices.identity import is_device_id, owns_client_id

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25  # detection within a second; a stat() per poll costs nothing
READ_CHUNK_BYTES = 1 << 20  # bounded reads: a long log is caught up on in steps
RETRY_INTERVAL_S = 1.0  # the database refused a record
MAX_CLIENT_ID_CHARS = 256  # MQTT allows 65,535 bytes; what is kept of a hostile one

# The suffix is anchored at the end and the username is a certificate CN (our alphabet), so
# a client id crafted to look like a suffix cannot change what is parsed. Mosquitto refuses
# client ids with control characters (malformed UTF-8 for MQTT), so one cannot forge a line.
_CONNECTED = re.compile(
    r"^(?P<time>\S+): New client connected from (?P<peer>\S+) as (?P<client_id>.+) "
    r"\(p\d+, c\d, k\d+(?:, u'(?P<identity>[A-Za-z0-9._-]*)')?\)\.$")
_CLOSED = re.compile(
    r"^(?P<time>\S+): Client (?P<client_id>.+) already connected, closing old connection\.$")


@dataclass(frozen=True, slots=True)
class Takeover:
    at: dt.datetime
    client_id: str  # the id claimed: when it names a device, that device is the victim
    identity: str  # the CN of the certificate that claimed it
    peer: str
    live_session_closed: bool  # the id's owner was connected, and its connection was closed


def is_takeover(client_id: str, identity: str) -> bool:
    """True when ``identity`` has no business under ``client_id``: a device under any id
    but its own (devices.identity.owns_client_id), or a service under a device's id."""
    if owns_client_id(identity, client_id):
        return False
    return is_device_id(identity) or is_device_id(client_id)


def log_time(text: str) -> dt.datetime | None:
    """The time of a Mosquitto log line: ours (``%Y-%m-%dT%H:%M:%S%z``), the same without
    an offset (taken as UTC), or Mosquitto's default (Unix seconds)."""
    try:
        if text.isdigit():
            return dt.datetime.fromtimestamp(int(text), dt.UTC)
        parsed = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class TakeoverDetector:
    """Fed the broker's log line by line; returns a Takeover when a line shows one."""

    def __init__(self) -> None:
        self._closed: str | None = None  # "already connected" comes just before the connect

    def feed(self, line: str) -> Takeover | None:
        closed = _CLOSED.match(line)
        if closed:
            self._closed = closed["client_id"]
            return None
        connected = _CONNECTED.match(line)
        if not connected:
            return None
        client_id, identity = connected["client_id"], connected["identity"]
        live, self._closed = self._closed == client_id, None
        at = log_time(connected["time"])
        if identity is None or at is None or not is_takeover(client_id, identity):
            return None
        return Takeover(at, client_id[:MAX_CLIENT_ID_CHARS], identity, connected["peer"], live)


# Written by the broker's policy plugin for each SUBSCRIBE or PUBLISH it refuses.
_REFUSED = re.compile(r"^\S+: healthiot: refused (?P<kind>subscribe|publish) by [a-z0-9-]+$")


def refusal_kind(line: str) -> str | None:
    """``subscribe`` or ``publish`` when ``line`` is the broker refusing one, else None."""
    refused = _REFUSED.match(line)
    return refused["kind"] if refused else None


@dataclass
class TakeoverStats:
    takeovers: int = 0  # recorded (a line read again after a restart is not counted twice)
    lines: int = 0  # log lines read
    following: bool = False  # false while the log file cannot be read
    # Subscriptions and publications the broker refused (counted from the log's top after a
    # restart, as a counter that was reset).
    refusals: Counter[str] = field(default_factory=Counter)


def render(stats: TakeoverStats, prefix: str = "healthiot_broker") -> str:
    """The watcher's metrics in the Prometheus text format (as broker_bridge/metrics.py)."""
    families = (
        ("client_id_takeovers_total", "counter", stats.takeovers,
         "connections under a client id that is not the certificate's own"),
        ("log_lines_total", "counter", stats.lines, "broker log lines read"),
        ("log_following", "gauge", int(stats.following), "1 while the broker log is read"),
    )
    lines: list[str] = []
    for name, kind, value, help_text in families:
        full = f"{prefix}_{name}"
        lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}", f"{full} {value}"]
    full = f"{prefix}_refusals_total"
    lines += [f"# HELP {full} subscriptions and publications the broker refused a client",
              f"# TYPE {full} counter"]
    lines += [f'{full}{{kind="{k}"}} {stats.refusals[k]}' for k in ("publish", "subscribe")]
    return "\n".join(lines) + "\n"


class TakeoverStore:
    """The client_id_takeovers table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, event: Takeover) -> bool:
        """Insert ``event``; False when that connection was recorded already."""
        inserted = await self._pool.fetchval(
            """INSERT INTO client_id_takeovers (at, client_id, identity, peer,
                                                live_session_closed)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id""",
            event.at, event.client_id, event.identity, event.peer, event.live_session_closed)
        return inserted is not None

    async def involving(self, device_id: str) -> list[Takeover]:
        """Takeovers of ``device_id``'s client id or by its certificate, oldest first."""
        rows = await self._pool.fetch(
            """SELECT at, client_id, identity, peer, live_session_closed
               FROM client_id_takeovers WHERE client_id = $1 OR identity = $1
               ORDER BY at, id""", device_id)
        return [Takeover(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class _Position:
    inode: int
    offset: int


def _read(path: Path, position: _Position | None) -> tuple[bytes, _Position | None, bool]:
    """The bytes after ``position`` (at most a chunk), the new position, and whether the
    file was replaced or truncated (rotation) so that reading started again at its top."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            restarted = position is None or position.inode != st.st_ino \
                or st.st_size < position.offset
            offset = 0 if restarted or position is None else position.offset
            f.seek(offset)
            data = f.read(READ_CHUNK_BYTES)
    except FileNotFoundError:
        return b"", None, position is not None
    return data, _Position(st.st_ino, offset + len(data)), restarted


class TakeoverWatcher:
    """Follows the broker's log file and records every takeover it shows.

    It reads the file from the top (the table's unique key makes a line read again after a
    restart a no-op), follows appends, and starts again at the top of a rotated file."""

    def __init__(self, log_file: Path, store: TakeoverStore, *,
                 stats: TakeoverStats | None = None,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.log_file = log_file
        self._store = store
        self.stats = stats or TakeoverStats()
        self._poll_s = poll_interval_s

    async def run(self, caught_up: asyncio.Event | None = None) -> None:
        """Until cancelled; sets ``caught_up`` once the file's current end is reached.
        While the database refuses, the watcher waits on the event it could not record."""
        position: _Position | None = None
        pending = b""
        detector = TakeoverDetector()
        while True:
            data, new_position, restarted = await asyncio.to_thread(
                _read, self.log_file, position)
            if restarted:
                pending, detector = b"", TakeoverDetector()
            self.stats.following = new_position is not None
            *lines, pending = (pending + data).split(b"\n")
            position = new_position
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if (kind := refusal_kind(line)) is not None:
                    self.stats.refusals[kind] += 1
                event = detector.feed(line)
                if event is not None:
                    await self._report(event)
                self.stats.lines += 1
            if len(data) == READ_CHUNK_BYTES:
                continue  # more to catch up on
            if caught_up is not None:
                caught_up.set()
            await asyncio.sleep(self._poll_s)

    async def _report(self, event: Takeover) -> None:
        """Record, count and log ``event``; while the database refuses, try again (the log
        waits: nothing is lost, and there is nothing to record without a database)."""
        while True:
            try:
                recorded = await self._store.record(event)
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.exception("takeover not recorded yet", extra={"identity": event.identity})
                await asyncio.sleep(RETRY_INTERVAL_S)
        if not recorded:
            return
        self.stats.takeovers += 1
        log.warning("client id taken over", extra={
            "client_id": event.client_id.encode("ascii", "backslashreplace").decode(),
            "identity": event.identity, "live_session_closed": event.live_session_closed})
