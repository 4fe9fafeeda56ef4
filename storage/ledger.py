"""The message ledger: which (device, epoch, seq) are stored, and what each brought.

Recent messages have a row each in ``ingested_messages`` (receive and store times, counts,
device-clock span, units, payload digest): what tells a redelivery from a reused number
exactly, and what a resend or a takeover investigation looks at. Past the exact horizon the
maintenance job (``compact``) moves them to ``ingested_ranges``, runs of consecutive
numbers (migration 170): idempotency and loss accounting stay whole at a few dozen bytes a
device a day instead of a row per message.

A number inside a run is stored. A message carrying one is a repeat, acknowledged and not
stored twice, unless its accepted samples lie wholly outside the run's device-clock span:
then it is a reuse (a counter that restarted without a new epoch carries new samples, while
a redelivery carries the very ones the run counted). A repeat with no accepted sample, or of
a run without a span, is not compared, as rows from before digests were kept.

Ingestion holds ``LOCK`` shared for its transaction and compaction holds it exclusively:
a message row moved by a compaction that has not committed yet would otherwise be neither
seen in the runs nor in conflict with the insert, and its repeat would be stored twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

LOCK = 0x4C454447  # "LEDG": transaction-level advisory lock, see the docstring
# Streams (device, epoch) moved per transaction, a day of receipt at most: ingestion waits
# while one runs. A pass moves a few minutes of rows per stream; only the first on a ledger
# of a year (an upgrade) has whole days to move.
STREAMS_PER_TRANSACTION = 100


class Span(NamedTuple):
    """The device-clock span of a compacted run (None: no accepted sample in it)."""

    first: dt.datetime | None
    last: dt.datetime | None

    def excludes(self, first: dt.datetime | None, last: dt.datetime | None) -> bool:
        """True when a message with accepted samples from ``first`` to ``last`` cannot be a
        repeat of one of this run's messages: its samples lie wholly outside the span."""
        if first is None or last is None or self.first is None or self.last is None:
            return False
        return last < self.first or first > self.last


async def compacted(conn: asyncpg.Connection, keys: Sequence[tuple[str, int, int]]
                    ) -> dict[tuple[str, int, int], Span]:
    """Which of these (device, epoch, seq) lie in a compacted run, with its span. One index
    probe per key (the run starting at or below it)."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT m.d, m.e, m.s, g.first_sample_at, g.last_sample_at
           FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS m(d, e, s)
           CROSS JOIN LATERAL (
               SELECT seq_hi, first_sample_at, last_sample_at FROM ingested_ranges g
               WHERE g.device_id = m.d AND g.epoch = m.e AND g.seq_lo <= m.s
               ORDER BY g.seq_lo DESC LIMIT 1) g
           WHERE g.seq_hi >= m.s""",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    return {(r["d"], r["e"], r["s"]): Span(r["first_sample_at"], r["last_sample_at"])
            for r in rows}


# Rows past the horizon of some streams, and the runs of those streams from the same UTC
# days of receipt, re-cut into maximal runs: consecutive numbers, one day, the same units.
_COMPACT = """
WITH moved AS (
    DELETE FROM ingested_messages m USING unnest($2::text[], $3::bigint[]) AS s(d, e)
    WHERE m.device_id = s.d AND m.epoch = s.e AND m.received_at < $1
    RETURNING m.device_id, m.epoch, m.seq AS lo, m.seq AS hi, m.received_at AS rf,
              m.received_at AS rt, m.samples::bigint AS n, m.rejected::bigint AS x,
              m.first_sample_at AS f, m.last_sample_at AS l, m.raw_units AS u),
since AS (SELECT device_id, epoch, date_trunc('day', min(rf), 'UTC') AS day
          FROM moved GROUP BY 1, 2),
merged AS (
    DELETE FROM ingested_ranges g USING since
    WHERE g.device_id = since.device_id AND g.epoch = since.epoch
      AND g.received_to >= since.day
    RETURNING g.device_id, g.epoch, g.seq_lo, g.seq_hi, g.received_from, g.received_to,
              g.samples, g.rejected, g.first_sample_at, g.last_sample_at, g.raw_units),
pieces AS (SELECT * FROM moved UNION ALL SELECT * FROM merged),
marked AS (
    SELECT *, CASE WHEN lo = lag(hi) OVER w + 1
                    AND date_trunc('day', rf, 'UTC') = date_trunc('day', lag(rf) OVER w, 'UTC')
                    AND u IS NOT DISTINCT FROM lag(u) OVER w THEN 0 ELSE 1 END AS starts
    FROM pieces WINDOW w AS (PARTITION BY device_id, epoch ORDER BY lo)),
runs AS (SELECT *, sum(starts) OVER (PARTITION BY device_id, epoch ORDER BY lo) AS run
         FROM marked),
made AS (
    INSERT INTO ingested_ranges (device_id, epoch, seq_lo, seq_hi, received_from,
                                 received_to, samples, rejected, first_sample_at,
                                 last_sample_at, raw_units)
    SELECT device_id, epoch, min(lo), max(hi), min(rf), max(rt), sum(n), sum(x), min(f),
           max(l), (array_agg(u))[1]
    FROM runs GROUP BY device_id, epoch, run
    RETURNING 1)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM made) AS made"""


async def compact(pool: asyncpg.Pool, before: dt.datetime) -> int:
    """Move the ledger rows received before ``before`` into runs, oldest day of receipt
    first; returns how many rows were moved. Safe to repeat, and to run beside ingestion
    (``LOCK``)."""
    moved = 0
    while True:
        oldest = await pool.fetchval("SELECT min(received_at) FROM ingested_messages")
        if oldest is None or oldest >= before:
            return moved
        day_end = (oldest.astimezone(dt.UTC).replace(hour=0, minute=0, second=0,
                                                     microsecond=0) + dt.timedelta(days=1))
        upto = min(before, day_end)
        streams = await pool.fetch(
            """SELECT DISTINCT device_id, epoch FROM ingested_messages
               WHERE received_at < $1 LIMIT $2""", upto, STREAMS_PER_TRANSACTION)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
            row = await conn.fetchrow(_COMPACT, upto, [s["device_id"] for s in streams],
                                      [s["epoch"] for s in streams])
        assert row is not None
        moved += int(row["moved"])


async def count(conn: asyncpg.Connection | asyncpg.Pool, device_ids: Sequence[str]
                ) -> tuple[int, int, int]:
    """(messages, samples, rejected samples) stored for these devices, both forms."""
    row = await conn.fetchrow(
        """SELECT sum(m) AS m, sum(s) AS s, sum(r) AS r FROM (
               SELECT count(*) AS m, coalesce(sum(samples), 0) AS s,
                      coalesce(sum(rejected), 0) AS r
               FROM ingested_messages WHERE device_id = ANY($1::text[])
               UNION ALL
               SELECT coalesce(sum(seq_hi - seq_lo + 1), 0), coalesce(sum(samples), 0),
                      coalesce(sum(rejected), 0)
               FROM ingested_ranges WHERE device_id = ANY($1::text[])) t""",
        list(device_ids))
    assert row is not None
    return int(row["m"]), int(row["s"]), int(row["r"])
