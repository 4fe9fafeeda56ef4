"""The message ledger past its exact horizon: runs of sequence numbers instead of a row per
message (issue 19, migration 170), with idempotency, reuse detection, gap and loss
accounting, retention and erasure still right. Real PostgreSQL, the real store."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from types import SimpleNamespace

import numpy as np

from broker_bridge.gaps import PgLedger, Stream
from healthiot import simulate
from storage import ledger
from storage.maintenance import Maintenance, RetentionPolicy
from storage.rollups import Rollups
from storage.segments import Samples
from storage.store import MessageIn, QuarantineIn, SegmentIn
from tests.conftest import new_patient

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
# Two days ago at noon UTC: a day of receipt the tests can stay inside, or cross on purpose.
DAY = (NOW - dt.timedelta(days=2)).replace(hour=12, minute=0, second=0)


def _message(patient: uuid.UUID, seq: int, *, at: dt.datetime = DAY, device: str = "w-1",
             epoch: int = 0, payload: bytes | None = None, value: float = 70.0,
             raw_units: dict[str, list[str]] | None = None) -> MessageIn:
    """Five 1 Hz heart-rate samples, seq * 5 s after ``DAY``, received 1 s after the last
    (``at`` moves the receipt; the samples stay where the number puts them)."""
    start = DAY + dt.timedelta(seconds=5 * seq)
    t = int(start.timestamp() * 1000) + np.arange(5, dtype=np.int64) * 1000
    samples = Samples(t, np.full(5, value), np.zeros(5, np.uint8))
    received = at + dt.timedelta(seconds=5 * seq + 5)
    payload = payload if payload is not None else f"{seq}:{value}".encode()
    return MessageIn(device, seq, received, [SegmentIn(patient, "heart_rate", samples)], 1,
                     first_sample_at=start, last_sample_at=start + dt.timedelta(seconds=4),
                     raw_units=raw_units, epoch=epoch,
                     if_reused=QuarantineIn(device, f"devices/{device}/telemetry", received,
                                            "sequence_reused", f"seq {seq}", payload,
                                            seq=seq, epoch=epoch))


async def _runs(core) -> list[tuple[str, int, int, int, int, int]]:  # type: ignore[no-untyped-def]
    return [tuple(r) for r in await core.pool.fetch(
        """SELECT device_id, epoch, seq_lo, seq_hi, samples, rejected FROM ingested_ranges
           ORDER BY device_id, epoch, seq_lo""")]


async def _segments(core) -> int:  # type: ignore[no-untyped-def]
    return int(await core.pool.fetchval("SELECT coalesce(sum(samples), 0) FROM segments"))


async def test_compaction_turns_old_rows_into_runs_and_keeps_the_loss_accounting(core):
    patient = (await new_patient(core, "runs"))[0]
    await core.store.ingest([_message(patient, s) for s in (1, 2, 3, 5, 6)])
    await core.store.ingest([_message(patient, 7, at=NOW - dt.timedelta(hours=1) -
                                      dt.timedelta(seconds=40))])  # inside the horizon
    before = await core.store.count_stored(["w-1"])
    assert before == (6, 30, 6)
    assert await ledger.compact(core.pool, NOW - dt.timedelta(hours=24)) == 5
    # A gap (4) cuts a run; the recent message keeps its row.
    assert await _runs(core) == [("w-1", 0, 1, 3, 15, 3), ("w-1", 0, 5, 6, 10, 2)]
    assert [r["seq"] for r in await core.pool.fetch("SELECT seq FROM ingested_messages")] == [7]
    assert await core.store.count_stored(["w-1"]) == before
    assert await ledger.compact(core.pool, NOW - dt.timedelta(hours=24)) == 0  # repeatable


async def test_a_later_pass_extends_a_run_and_the_missing_number_joins_two(core):
    patient = (await new_patient(core, "extend"))[0]
    await core.store.ingest([_message(patient, s) for s in (1, 2, 4)])
    await ledger.compact(core.pool, NOW)
    # 5 and then 3 (late) arrive the same day of receipt, and are compacted later.
    await core.store.ingest([_message(patient, 5), _message(patient, 3)])
    await ledger.compact(core.pool, NOW)
    assert await _runs(core) == [("w-1", 0, 1, 5, 25, 5)]
    row = await core.pool.fetchrow("SELECT * FROM ingested_ranges")
    assert row["first_sample_at"] == DAY + dt.timedelta(seconds=5)
    assert row["last_sample_at"] == DAY + dt.timedelta(seconds=29)


async def test_runs_are_cut_at_utc_midnight_of_receipt_at_a_new_epoch_and_at_other_units(core):
    patient = (await new_patient(core, "cuts"))[0]
    midnight = DAY.replace(hour=0) + dt.timedelta(days=1)
    late = midnight - DAY - dt.timedelta(seconds=5 * 3 + 5) + dt.timedelta(seconds=1)
    await core.store.ingest([
        _message(patient, 1), _message(patient, 2), _message(patient, 3, at=DAY + late),
        _message(patient, 4, at=DAY + late),
        _message(patient, 5, at=DAY + late, raw_units={"heart_rate": ["{beats}/min"]}),
        _message(patient, 1, epoch=1, at=DAY + dt.timedelta(seconds=60))])
    await ledger.compact(core.pool, NOW)
    assert await _runs(core) == [("w-1", 0, 1, 2, 10, 2), ("w-1", 0, 3, 4, 10, 2),
                                 ("w-1", 0, 5, 5, 5, 1), ("w-1", 1, 1, 1, 5, 1)]
    assert await core.pool.fetchval(
        "SELECT raw_units FROM ingested_ranges WHERE seq_lo = 5") == \
        '{"heart_rate": ["{beats}/min"]}'


async def test_a_late_repeat_of_a_compacted_number_is_acknowledged_and_not_stored_twice(core):
    patient = (await new_patient(core, "repeat"))[0]
    await core.store.ingest([_message(patient, s) for s in range(1, 6)])
    await ledger.compact(core.pool, NOW)
    samples, counts = await _segments(core), await core.store.count_stored(["w-1"])
    # Redelivered days later: the same readings, the same number, a new receive time.
    again = _message(patient, 3, at=NOW)
    done = await core.store.ingest_batch([again, again])
    assert (done.new, done.reused, done.fresh) == (0, [], frozenset())
    assert await _segments(core) == samples
    assert await core.store.count_stored(["w-1"]) == counts
    assert await core.pool.fetchval("SELECT count(*) FROM ingested_messages") == 0
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 0
    assert await core.store.stored_already([("w-1", 0, 3), ("w-1", 0, 9)]) == {("w-1", 0, 3)}
    # A repeat not compared (no payload kept to compare), or without accepted samples, too.
    bare = MessageIn("w-1", 4, NOW, [], 5)
    assert (await core.store.ingest_batch([bare])).new == 0


async def test_a_compacted_number_reused_with_new_readings_is_quarantined_not_dropped(core):
    patient = (await new_patient(core, "reuse"))[0]
    await core.store.ingest([_message(patient, s) for s in range(1, 6)])
    await ledger.compact(core.pool, NOW)
    samples = await _segments(core)
    # A counter that restarted without a new epoch: number 2 again, with readings of now.
    start = NOW - dt.timedelta(minutes=1)
    t = int(start.timestamp() * 1000) + np.arange(5, dtype=np.int64) * 1000
    reused = MessageIn("w-1", 2, NOW, [SegmentIn(patient, "heart_rate", Samples(
        t, np.full(5, 90.0), np.zeros(5, np.uint8)))], 0, first_sample_at=start,
        last_sample_at=start + dt.timedelta(seconds=4),
        if_reused=QuarantineIn("w-1", "devices/w-1/telemetry", NOW, "sequence_reused",
                               "seq 2", b"new", seq=2))
    done = await core.store.ingest_batch([reused])
    assert done.new == 0 and [m.seq for m in done.reused] == [2]
    assert await _segments(core) == samples
    assert [tuple(r) for r in await core.pool.fetch(
        "SELECT reason, detail FROM quarantine")] == [("sequence_reused", "seq 2")]


async def test_the_gap_ledger_sees_numbers_in_runs_and_rows_together(core):
    patient = (await new_patient(core, "gaps"))[0]
    await core.store.ingest([_message(patient, s) for s in (1, 2, 4, 5)])
    await ledger.compact(core.pool, NOW)
    await core.store.ingest([_message(patient, s, at=NOW) for s in (6, 7, 9)])
    pg = PgLedger(core.pool)
    stream = Stream("w-1")
    assert await pg.stored_in({stream: [(1, 12)]}) == {stream: [(1, 2), (4, 7), (9, 9)]}
    # Clipped to what is asked; overlapping asks counted once.
    assert await pg.stored_in({stream: [(2, 4), (3, 6)]}) == {stream: [(2, 2), (4, 6)]}
    assert await pg.stored_below({stream: 4, Stream("w-1", 1): 3}) == {
        stream: 2, Stream("w-1", 1): None}
    assert await pg.stored_below({stream: 9}) == {stream: 7}
    assert await pg.stored_below({stream: 5}) == {stream: 4}


async def test_the_maintenance_pass_compacts_the_ledger_and_retention_removes_old_runs(core):
    patient = (await new_patient(core, "pass"))[0]
    await core.store.ingest([_message(patient, s) for s in (1, 2)])
    await core.store.ingest([_message(patient, 3, at=NOW - dt.timedelta(hours=2),
                                      device="w-2")])
    job = Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                      core.audit, RetentionPolicy(ledger_exact_hours=1))
    report = await job.run_once(NOW)
    assert report is not None and report.failed_steps == ()
    assert report.ledger_rows_compacted == 3
    assert [r[:4] for r in await _runs(core)] == [("w-1", 0, 1, 2), ("w-2", 0, 3, 3)]
    # A year later (raw retention 365 days) the runs received on DAY go with the data;
    # the one received since stays.
    await job.run_once(DAY + dt.timedelta(days=366))
    assert [r[:4] for r in await _runs(core)] == [("w-2", 0, 3, 3)]


async def test_a_compaction_waits_for_a_batch_under_way_and_the_batch_for_it(core):
    patient = (await new_patient(core, "lock"))[0]
    await core.store.ingest([_message(patient, s) for s in (1, 2)])
    async with core.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ledger.LOCK)
        compacting = asyncio.create_task(ledger.compact(core.pool, NOW))
        await asyncio.sleep(0.3)
        assert not compacting.done()  # it would move rows a batch in flight cannot see
    assert await compacting == 2


async def test_the_simulator_report_counts_compacted_runs_as_stored(core):
    patient = (await new_patient(core, "report"))[0]
    await core.store.ingest([_message(patient, s) for s in range(1, 7)])
    await ledger.compact(core.pool, NOW)
    await core.store.ingest([_message(patient, 7, at=NOW)])
    # A device whose run acknowledged 3..7: 3..6 compacted (cut inside a run), 7 a row.
    acked = SimpleNamespace(first_acked=3, last_acked=7, sent=5, messages=5, refused=0,
                            resent=0, samples=30, renewals=0, spikes=[], dips=[],
                            not_taken=[], payloads=None)  # no payloads: by counts
    device = SimpleNamespace(device_id="w-1", model="watch", ledger=acked, pending=0)
    [report] = await simulate._compare([device], core)  # type: ignore[list-item]
    assert (report.stored_messages, report.stored, report.rejected) == (5, 25, 5)
    assert (report.lost, report.dup) == (0, 0)
