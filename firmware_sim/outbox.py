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

A message is numbered within an *epoch*: a device whose counter restarts (a firmware reset,
a counter that would wrap) calls ``new_epoch`` and numbers from 1 again, and the backend
keeps the two numberings apart (it keys messages by device, epoch and number). Messages
numbered before keep their epoch and number, pending or in the replay window.

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

_OUTBOX = """
CREATE TABLE IF NOT EXISTS outbox (
    epoch    INTEGER NOT NULL DEFAULT 0,
    seq      INTEGER NOT NULL,
    payload  BLOB NOT NULL,
    samples  INTEGER NOT NULL,
    acked_at REAL,           -- NULL while the broker has not accepted it
    PRIMARY KEY (epoch, seq)
)"""
_SCHEMA = _OUTBOX + """;
CREATE INDEX IF NOT EXISTS outbox_acked ON outbox (acked_at) WHERE acked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    payload: bytes
    samples: int
    epoch: int = 0


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
            _add_epochs(db)
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()
            epoch = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
            pending = db.execute("SELECT seq, payload, samples, epoch FROM outbox"
                                 " WHERE acked_at IS NULL ORDER BY epoch, seq").fetchall()
        self._replay_s = replay_s
        self._replay_max = replay_max
        self._clock = clock
        self._acks_since_trim = 0
        # first_seq carries a number from an older firmware's state file over, once.
        self._next_seq = int(row[0]) if row else first_seq
        self._epoch = int(epoch[0]) if epoch else 0
        self._pending: deque[Message] = deque(_message(*r) for r in pending)

    def _open(self) -> closing[sqlite3.Connection]:
        if self._closed:
            raise sqlite3.ProgrammingError("the outbox is closed")
        db = sqlite3.connect(self._path, isolation_level=None)  # explicit transactions
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        return closing(db)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def epoch(self) -> int:
        """The epoch of the numbers ``add`` gives now."""
        return self._epoch

    def new_epoch(self) -> None:
        """Number from 1 again under the next epoch (a firmware reset, a counter that would
        wrap). Messages numbered before keep their epoch and number."""
        with self._open() as db, _Transaction(db):
            for name, value in (("epoch", self._epoch + 1), ("next_seq", 1)):
                db.execute("INSERT INTO meta (name, value) VALUES (?, ?)"
                           " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                           (name, value))
        self._epoch += 1
        self._next_seq = 1

    def __len__(self) -> int:
        """How many messages wait for the broker."""
        return len(self._pending)

    def __getitem__(self, index: int) -> Message:
        return self._pending[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self._pending)

    def add(self, payload: bytes, samples: int) -> Message:
        """Number a message and keep it: on return it is on flash, ready to publish."""
        message = Message(self._next_seq, payload, samples, self._epoch)
        with self._open() as db, _Transaction(db):
            db.execute("INSERT INTO outbox (epoch, seq, payload, samples) VALUES (?, ?, ?, ?)",
                       (message.epoch, message.seq, payload, samples))
            db.execute("INSERT INTO meta (name, value) VALUES ('next_seq', ?)"
                             " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                             (message.seq + 1,))
        self._next_seq += 1
        self._pending.append(message)
        return message

    def acked(self, seq: int, epoch: int = 0) -> None:
        """The broker accepted ``seq`` (of ``epoch``): it leaves the queue for the replay
        window."""
        with self._open() as db:
            db.execute("UPDATE outbox SET acked_at = ? WHERE epoch = ? AND seq = ?",
                       (self._clock(), epoch, seq))
        if self._pending and (self._pending[0].epoch, self._pending[0].seq) == (epoch, seq):
            self._pending.popleft()
        else:
            self._pending = deque(m for m in self._pending if (m.epoch, m.seq) != (epoch, seq))
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
                """DELETE FROM outbox WHERE acked_at IS NOT NULL AND (epoch, seq) NOT IN (
                       SELECT epoch, seq FROM outbox WHERE acked_at IS NOT NULL
                       ORDER BY epoch DESC, seq DESC LIMIT ?)""", (self._replay_max,))

    def replay(self, ranges: list[tuple[int, int]],
               limit: int = RESEND_MAX_MESSAGES, epoch: int = 0) -> list[Message]:
        """Acknowledged messages of ``epoch`` still in the window whose numbers fall in
        ``ranges`` (inclusive), oldest first, at most ``limit``. Pending ones are not
        returned: they are on their way anyway."""
        found: dict[int, Message] = {}
        with self._open() as db:
            for lo, hi in ranges:
                for row in db.execute(
                        "SELECT seq, payload, samples, epoch FROM outbox WHERE acked_at IS NOT"
                        " NULL AND epoch = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                        (epoch, lo, hi, limit)):
                    found[int(row[0])] = _message(*row)
        return [found[s] for s in sorted(found)[:limit]]

    def last_acked(self) -> Message | None:
        """The most recent acknowledged message still in the window."""
        with self._open() as db:
            row = db.execute("SELECT seq, payload, samples, epoch FROM outbox WHERE acked_at"
                             " IS NOT NULL ORDER BY epoch DESC, seq DESC LIMIT 1").fetchone()
        return _message(*row) if row else None

    def close(self) -> None:
        """Nothing stays open between operations; later use is an error, as with a file."""
        self._closed = True


def _message(seq: int, payload: bytes, samples: int, epoch: int) -> Message:
    return Message(int(seq), bytes(payload), int(samples), int(epoch))


def _add_epochs(db: sqlite3.Connection) -> None:
    """An outbox written by firmware without epochs (keyed by seq alone) gets its messages
    moved to epoch 0 of the current table, once."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if not columns or "epoch" in columns:
        return
    with _Transaction(db):
        db.execute("ALTER TABLE outbox RENAME TO outbox_without_epochs")
        db.execute(_OUTBOX)
        db.execute("INSERT INTO outbox (epoch, seq, payload, samples, acked_at)"
                   " SELECT 0, seq, payload, samples, acked_at FROM outbox_without_epochs")
        db.execute("DROP TABLE outbox_without_epochs")  # and its index


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
