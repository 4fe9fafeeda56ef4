"""The device's durable outbox: numbered messages kept on flash until the broker takes them.

One SQLite database per device, in its flash directory. A message is written (with the next
sequence number, in one transaction) before it is ever published, so a device restarted at
any moment finds every unacknowledged message and never reuses a number. A message the broker
acknowledged is not deleted at once: it stays in a bounded *replay window* so that the device
can honour a resend request when the backend finds a sequence gap (a broker that crashed
after its PUBACK loses the message, and only the device still has it).

SQLite runs with a rollback journal and ``synchronous=OFF``: a commit is in the OS's hands
when it returns, so it survives the process being killed (the fault we simulate; a write cut
short is rolled back from the journal at the next open), not the host losing power, and costs
no fsync per reading. ``durable=True`` asks for an fsync per commit.

The database is opened for each operation and closed after it (~0.2 ms): a fleet of 10,000
devices in one process would otherwise hold 10,000 to 30,000 open files besides its 10,000
sockets, over the usual limits (a WAL database keeps three files open). Pending messages are
kept in memory too, so the send loop reads no disk.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

REPLAY_WINDOW_S = 3600.0  # a gap is found within seconds; an hour leaves room for outages
REPLAY_MAX_MESSAGES = 5000  # and bounds the flash a chatty device spends on it
TRIM_EVERY = 50  # acks between two trims of the replay window: a DELETE per ack is waste
RESEND_MAX_MESSAGES = 1000  # one resend request replays at most this many messages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY,
    payload  BLOB NOT NULL,
    samples  INTEGER NOT NULL,
    acked_at REAL            -- NULL while the broker has not accepted it
);
CREATE INDEX IF NOT EXISTS outbox_acked ON outbox (acked_at) WHERE acked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    payload: bytes
    samples: int


class Outbox:
    """Pending messages in sequence order, and the replay window of acknowledged ones.

    Pending messages are also kept in memory (the send loop reads the head often); the
    replay window is read from disk only when a resend is requested.
    """

    def __init__(self, path: Path, *, first_seq: int = 1, durable: bool = False,
                 replay_s: float = REPLAY_WINDOW_S, replay_max: int = REPLAY_MAX_MESSAGES,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._synchronous = "FULL" if durable else "OFF"
        self._closed = False
        with self._open() as db:
            # Persistent in the file; an outbox written by an older firmware in WAL mode is
            # checkpointed and converted.
            db.execute("PRAGMA journal_mode=DELETE")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()
            pending = db.execute("SELECT seq, payload, samples FROM outbox"
                                 " WHERE acked_at IS NULL ORDER BY seq").fetchall()
        self._replay_s = replay_s
        self._replay_max = replay_max
        self._clock = clock
        self._acks_since_trim = 0
        # first_seq carries a number from an older firmware's state file over, once.
        self._next_seq = int(row[0]) if row else first_seq
        self._pending: deque[Message] = deque(
            Message(int(seq), bytes(payload), int(samples)) for seq, payload, samples in pending)

    def _open(self) -> closing[sqlite3.Connection]:
        if self._closed:
            raise sqlite3.ProgrammingError("the outbox is closed")
        db = sqlite3.connect(self._path, isolation_level=None)  # explicit transactions
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        return closing(db)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def __len__(self) -> int:
        """How many messages wait for the broker."""
        return len(self._pending)

    def __getitem__(self, index: int) -> Message:
        return self._pending[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self._pending)

    def add(self, payload: bytes, samples: int) -> Message:
        """Number a message and keep it: on return it is on flash, ready to publish."""
        message = Message(self._next_seq, payload, samples)
        with self._open() as db, _Transaction(db):
            db.execute("INSERT INTO outbox (seq, payload, samples) VALUES (?, ?, ?)",
                       (message.seq, payload, samples))
            db.execute("INSERT INTO meta (name, value) VALUES ('next_seq', ?)"
                             " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                             (message.seq + 1,))
        self._next_seq += 1
        self._pending.append(message)
        return message

    def acked(self, seq: int) -> None:
        """The broker accepted ``seq``: it leaves the queue for the replay window."""
        with self._open() as db:
            db.execute("UPDATE outbox SET acked_at = ? WHERE seq = ?", (self._clock(), seq))
        if self._pending and self._pending[0].seq == seq:
            self._pending.popleft()
        else:
            self._pending = deque(m for m in self._pending if m.seq != seq)
        self._acks_since_trim += 1
        if self._acks_since_trim >= TRIM_EVERY:
            self.trim()

    def trim(self) -> None:
        """Forget acknowledged messages older than the window or beyond its size."""
        self._acks_since_trim = 0
        with self._open() as db, _Transaction(db):
            db.execute("DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
                       (self._clock() - self._replay_s,))
            db.execute(
                """DELETE FROM outbox WHERE acked_at IS NOT NULL AND seq NOT IN (
                       SELECT seq FROM outbox WHERE acked_at IS NOT NULL
                       ORDER BY seq DESC LIMIT ?)""", (self._replay_max,))

    def replay(self, ranges: list[tuple[int, int]],
               limit: int = RESEND_MAX_MESSAGES) -> list[Message]:
        """Acknowledged messages still in the window whose numbers fall in ``ranges``
        (inclusive), oldest first, at most ``limit``. Pending ones are not returned: they
        are on their way anyway."""
        found: dict[int, Message] = {}
        with self._open() as db:
            for lo, hi in ranges:
                for seq, payload, samples in db.execute(
                        "SELECT seq, payload, samples FROM outbox WHERE acked_at IS NOT NULL"
                        " AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?", (lo, hi, limit)):
                    found[int(seq)] = Message(int(seq), bytes(payload), int(samples))
        return [found[s] for s in sorted(found)[:limit]]

    def last_acked(self) -> Message | None:
        """The most recent acknowledged message still in the window."""
        with self._open() as db:
            row = db.execute("SELECT seq, payload, samples FROM outbox WHERE acked_at IS NOT"
                             " NULL ORDER BY seq DESC LIMIT 1").fetchone()
        return Message(int(row[0]), bytes(row[1]), int(row[2])) if row else None

    def close(self) -> None:
        """Nothing stays open between operations; later use is an error, as with a file."""
        self._closed = True


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
