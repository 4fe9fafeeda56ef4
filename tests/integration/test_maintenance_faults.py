"""The maintenance pass with a bad row and a failing step: the row is set aside (counted,
logged by id, in /metrics), the pass goes on, and retention always runs. TimescaleDB's own
jobs are not relied on, and their failures are reported."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import aiohttp
import numpy as np
import pytest

from healthiot.localservers import free_port
from healthiot.services import Core, maintenance_registry, serve_metrics
from storage import maintenance as maintenance_module
from storage.errors import IntegrityError
from storage.maintenance import Maintenance, RetentionPolicy
from storage.rollups import Rollups
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from tests.conftest import new_patient


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


async def _ingest(core: Core, patient: uuid.UUID, seq: int, t_ms: list[int]) -> None:
    t = np.array(t_ms, np.int64)
    await core.store.ingest([MessageIn("watch-maint", seq, dt.datetime.now(dt.UTC), [SegmentIn(
        patient, "heart_rate", Samples(t, np.full(len(t), 60.0 + seq),
                                       np.zeros(len(t), np.uint8)))], 0)])


async def _old_quarantine_row(core: Core) -> None:
    await core.pool.execute(
        "INSERT INTO quarantine (received_at, topic, reason, detail, sealed, key_owner,"
        " key_version) VALUES (now() - interval '40 days', 't', 'r', 'd', '\\x00',"
        " 'system:quarantine', 1)")


async def test_a_segment_that_does_not_open_is_set_aside_and_the_pass_goes_on(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    patient, _, _ = await new_patient(core, "tampered")
    day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0,
                                          microsecond=0) - dt.timedelta(days=2)
    for i in range(4):  # four messages of one day, ten minutes apart
        await _ingest(core, patient, i, [_ms(day) + i * 600_000 + s * 1000 for s in range(10)])
    ids = [r["id"] for r in await core.pool.fetch("SELECT id FROM segments ORDER BY start_at")]
    await core.pool.execute(  # another row's ciphertext: the first row no longer opens
        "UPDATE segments SET sealed = (SELECT sealed FROM segments WHERE id = $1)"
        " WHERE id = $2", ids[1], ids[0])
    await _old_quarantine_row(core)
    job = Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                      core.audit, RetentionPolicy(quarantine_days=30))
    with caplog.at_level(logging.WARNING):
        report = await job.run_once()
    assert report is not None
    assert report.failed_steps == ()
    assert report.segments_set_aside == 1
    assert report.days_rolled_up == 1 and report.segments_compacted == 3  # the other three
    assert report.removed is not None and report.removed["quarantine"] == 1
    aside = await core.pool.fetch("SELECT id, reason FROM segments_set_aside")
    assert [(r["id"], r["reason"]) for r in aside] == [(ids[0], "IntegrityError")]
    assert str(ids[0]) in caplog.text  # logged by id
    series = await core.store.read_series(patient, "heart_rate", day, day + dt.timedelta(days=1))
    assert len(series) == 30
    metrics = maintenance_module.render(job.stats, core.store.set_aside_total)
    assert "healthiot_maintenance_segments_set_aside_total 1.0\n" in metrics
    assert "healthiot_maintenance_retention_runs_total 1.0\n" in metrics
    assert 'healthiot_maintenance_retention_removed_rows_total{kind="quarantine"} 1.0' in metrics


class _FailingRollups(Rollups):
    async def roll_up_pending(self, limit: int = 200) -> int:
        raise IntegrityError("a failure nothing can set aside")


async def test_retention_runs_when_an_earlier_step_fails(core: Core) -> None:
    await _old_quarantine_row(core)
    job = Maintenance(core.pool, core.store, _FailingRollups(core.pool, core.keyring, core.store),
                      core.audit, RetentionPolicy(quarantine_days=30))
    report = await job.run_once()
    assert report is not None and report.failed_steps == ("rollups",)
    assert report.removed is not None and report.removed["quarantine"] == 1
    assert job.stats.step_failures["rollups"] == 1
    assert 'healthiot_maintenance_step_failures_total{step="rollups"} 1.0' in (
        maintenance_module.render(job.stats, core.store.set_aside_total))


async def test_no_timescaledb_job_is_relied_on_and_failed_ones_are_counted(
        core: Core, db_engine: str) -> None:
    job = Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                      core.audit, RetentionPolicy())
    failed = await job.check_timescaledb_jobs()
    if db_engine == "native":
        assert failed == 0
        return
    # Retention and compression are ours: no policy job works on segments.
    assert await core.pool.fetchval("SELECT count(*) FROM timescaledb_information.jobs"
                                    " WHERE hypertable_name = 'segments'") == 0
    assert failed == await core.pool.fetchval(
        "SELECT count(*) FROM timescaledb_information.job_stats"
        " WHERE last_run_status = 'Failed'")
    assert job.stats.timescaledb_failed_jobs == failed


async def test_the_maintenance_daemon_serves_its_counters_at_metrics(core: Core) -> None:
    job = Maintenance(core.pool, core.store, _FailingRollups(core.pool, core.keyring, core.store),
                      core.audit, RetentionPolicy())
    await job.run_once()
    port = free_port()
    runner = await serve_metrics(maintenance_registry(job, core), "127.0.0.1", port)
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(10)) as resp:
            text = await resp.text()
    finally:
        await runner.cleanup()
    assert 'healthiot_maintenance_step_failures_total{step="rollups"} 1.0' in text
    assert "healthiot_maintenance_segments_set_aside_total 0.0" in text
    assert "healthiot_maintenance_retention_runs_total 1.0" in text
    assert "healthiot_maintenance_timescaledb_failed_jobs " in text
