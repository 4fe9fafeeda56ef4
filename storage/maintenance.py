"""The scheduled storage job: partitions ahead, rollups, compaction (segments and the
message ledger), retention.

Each pass is safe to repeat and to run from several replicas: a session advisory lock lets
one of them work while the others skip the pass. A step that fails is logged and counted and
the pass goes on: retention always runs. A segment that does not open is set aside
(segments_set_aside, logged by id, counted) rather than stop its day's rollup or compaction.

TimescaleDB's own scheduled jobs are not relied on (on PostgreSQL 15.20 they fail with
"cannot drop portal"): retention drops chunks from here, and no policy is added. Failures
of the jobs the extension runs anyway are read from its job statistics each pass, logged
and exposed as a gauge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from storage import ledger, partitioning
from storage.audit import Audit
from storage.errors import StorageError
from storage.rollups import Rollups
from storage.store import Store

log = logging.getLogger(__name__)
_LOCK = 0x4D41494E  # "MAIN"
COMPACT_AFTER = dt.timedelta(hours=1)  # leave the hour still being written alone


@dataclass(frozen=True)
class RetentionPolicy:
    raw_days: int = 365
    rollups_days: int = 1825
    quarantine_days: int = 30
    audit_days: int = 1825  # CNIL: access traces kept long enough to answer a patient
    # A shared scale's weighing nobody claimed: a month is time enough to notice it in the
    # app; after that it is most likely nobody's (a guest) and must not linger.
    unclaimed_days: int = 30
    # The message ledger keeps a row per message this long, then runs of numbers
    # (storage/ledger.py). A lost message is asked for within minutes and a device keeps
    # an hour of sent ones; a day covers a bridge restart's redeliveries with the exact
    # digest comparison, and later repeats are still recognised (by their runs).
    ledger_exact_hours: int = 24


@dataclass(frozen=True)
class PassReport:
    months_created: int = 0
    days_rolled_up: int = 0
    segments_compacted: int = 0
    removed: dict[str, int] | None = None
    failed_steps: tuple[str, ...] = ()
    segments_set_aside: int = 0  # by this pass
    ledger_rows_compacted: int = 0


@dataclass
class MaintenanceStats:
    """Counters of this process's passes, for /metrics (``registry``)."""

    passes: int = 0
    step_failures: Counter[str] = field(default_factory=Counter)
    timescaledb_failed_jobs: int = 0  # jobs whose last run failed, at the last pass
    retention_runs: int = 0  # retention steps completed
    removed: Counter[str] = field(default_factory=Counter)  # rows removed, by kind


class MaintenanceCollector(Collector):
    """Reads the job's counters at each scrape, and the segments set aside (counted by the
    store, which sets them aside during rollups and compaction)."""

    def __init__(self, stats: Callable[[], MaintenanceStats], set_aside_total: Callable[[], int],
                 prefix: str = "healthiot_maintenance") -> None:
        self._stats = stats
        self._set_aside = set_aside_total
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats, prefix = self._stats(), self._prefix
        yield CounterMetricFamily(f"{prefix}_passes", "maintenance passes run",
                                  value=stats.passes)
        failures = CounterMetricFamily(f"{prefix}_step_failures",
                                       "steps that failed (the pass went on)", labels=["step"])
        for step, n in sorted(stats.step_failures.items()):
            failures.add_metric([step], n)
        yield failures
        yield CounterMetricFamily(f"{prefix}_segments_set_aside",
                                  "segments that did not open, set aside",
                                  value=self._set_aside())
        yield CounterMetricFamily(f"{prefix}_retention_runs",
                                  "retention steps completed (each records what it removed)",
                                  value=stats.retention_runs)
        removed = CounterMetricFamily(f"{prefix}_retention_removed_rows",
                                      "rows removed by retention, by kind", labels=["kind"])
        for kind, n in sorted(stats.removed.items()):
            removed.add_metric([kind], n)
        yield removed
        yield GaugeMetricFamily(f"{prefix}_timescaledb_failed_jobs",
                                "TimescaleDB jobs whose last run failed",
                                value=stats.timescaledb_failed_jobs)


def registry(stats: Callable[[], MaintenanceStats], set_aside_total: Callable[[], int],
             ) -> CollectorRegistry:
    """A registry of this process's maintenance job (prometheus_client's global one stays
    unused)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(MaintenanceCollector(stats, set_aside_total))
    return found


def render(stats: MaintenanceStats, set_aside_total: int) -> str:
    """The Prometheus text exposition (format 0.0.4) of the maintenance job's counters."""
    return generate_latest(registry(lambda: stats, lambda: set_aside_total)).decode()


class Maintenance:
    def __init__(self, pool: asyncpg.Pool, store: Store, rollups: Rollups, audit: Audit,
                 policy: RetentionPolicy) -> None:
        self._pool = pool
        self._store = store
        self._rollups = rollups
        self._audit = audit
        self.policy = policy
        self.stats = MaintenanceStats()

    async def run_once(self, now: dt.datetime | None = None) -> PassReport | None:
        """One pass; None when another replica holds the lock. Partitions, rollups,
        compaction and the TimescaleDB job check each fail alone (logged, counted, named in
        the report); retention runs whatever happened before it, and raises if it fails."""
        now = now or dt.datetime.now(dt.UTC)
        failed: list[str] = []
        set_aside_before = self._store.set_aside_total

        async def step(name: str, work: Callable[[], Awaitable[int]]) -> int:
            try:
                return await work()
            except (StorageError, asyncpg.PostgresError, OSError):
                log.exception("maintenance step %s failed; the pass goes on", name)
                self.stats.step_failures[name] += 1
                failed.append(name)
                return 0

        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK):
                return None
            try:
                months = await step("partitions", lambda: self._months(conn, now))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
        self.stats.passes += 1
        rolled = await step("rollups", self._rollups.roll_up_pending)
        compacted = await step("compaction", lambda: self.compact(now))
        ledger_rows = await step("ledger", lambda: self.compact_ledger(now))
        await step("timescaledb_jobs", self.check_timescaledb_jobs)
        removed = await self.enforce_retention(now)
        return PassReport(months, rolled, compacted, removed, tuple(failed),
                          self._store.set_aside_total - set_aside_before, ledger_rows)

    async def compact_ledger(self, now: dt.datetime) -> int:
        """Ledger rows older than the exact horizon become runs of numbers."""
        return await ledger.compact(
            self._pool, now - dt.timedelta(hours=self.policy.ledger_exact_hours))

    @staticmethod
    async def _months(conn: asyncpg.Connection, now: dt.datetime) -> int:
        if await partitioning.mode(conn) == "native":
            return len(await partitioning.ensure_months(conn, now))
        return 0

    async def check_timescaledb_jobs(self) -> int:
        """How many of TimescaleDB's jobs failed at their last run (0 on native partitions);
        each is logged by id and name. Kept in ``stats`` for the gauge."""
        async with self._pool.acquire() as conn:
            if await partitioning.mode(conn) != "timescaledb":
                return 0
            rows = await conn.fetch(
                """SELECT j.job_id, j.application_name, s.total_failures
                   FROM timescaledb_information.jobs j
                   JOIN timescaledb_information.job_stats s USING (job_id)
                   WHERE s.last_run_status = 'Failed'""")
        for row in rows:
            log.warning("TimescaleDB job %s (%s) failed at its last run (%s failures)",
                        row["job_id"], row["application_name"], row["total_failures"])
        self.stats.timescaledb_failed_jobs = len(rows)
        return len(rows)

    async def compact(self, now: dt.datetime) -> int:
        groups = await self._pool.fetch(
            """SELECT patient_id, metric, device_id,
                      date_trunc('day', start_at, 'UTC') AS day
               FROM segments WHERE rolled_up AND end_at < $1
               GROUP BY 1, 2, 3, 4 HAVING count(*) > 1 LIMIT 200""", now - COMPACT_AFTER)
        merged = 0
        for g in groups:
            merged += await self._store.compact(g["patient_id"], g["metric"], g["device_id"],
                                                g["day"])
        return merged

    async def enforce_retention(self, now: dt.datetime) -> dict[str, int]:
        """Remove what outlived its retention period, and record each removal."""
        p = self.policy
        cutoffs = {"raw": now - dt.timedelta(days=p.raw_days),
                   "rollups": now - dt.timedelta(days=p.rollups_days),
                   "quarantine": now - dt.timedelta(days=p.quarantine_days),
                   "audit": now - dt.timedelta(days=p.audit_days),
                   "unclaimed": now - dt.timedelta(days=p.unclaimed_days),
                   "record_feed": now - dt.timedelta(days=p.raw_days),
                   "refresh_tokens": now, "sessions": now, "renewals": now,
                   "takeovers": now - dt.timedelta(days=p.audit_days)}
        removed: dict[str, int] = {}
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                before = await conn.fetchval(
                    "SELECT count(*) FROM segments WHERE start_at < $1", cutoffs["raw"])
                await partitioning.drop_before(conn, cutoffs["raw"])
                removed["raw"] = int(before)
                await conn.execute("DELETE FROM segments_set_aside WHERE start_at < $1",
                                   cutoffs["raw"])
                # The idempotency ledger goes with the raw data it vouches for.
                await conn.execute("DELETE FROM ingested_messages WHERE received_at < $1",
                                   cutoffs["raw"])
                # Runs lie within a UTC day of receipt: one goes when its day is past.
                await conn.execute("DELETE FROM ingested_ranges WHERE received_to < $1",
                                   cutoffs["raw"])
            # A rollup row goes when its whole window (a day of hours, a month of days) is
            # past the cutoff.
            status = await conn.execute(
                """DELETE FROM rollups WHERE window_start + CASE resolution
                       WHEN '1h' THEN interval '1 day' ELSE interval '1 month' END <= $1""",
                cutoffs["rollups"])
            removed["rollups"] = _deleted(status)
            status = await conn.execute("DELETE FROM quarantine WHERE received_at < $1",
                                        cutoffs["quarantine"])
            removed["quarantine"] = _deleted(status)
            status = await conn.execute("DELETE FROM unclaimed_readings WHERE held_at < $1",
                                        cutoffs["unclaimed"])
            removed["unclaimed"] = _deleted(status)
            # Invitations, used or not, are only a record of who joined: gone with them.
            await conn.execute("DELETE FROM device_invitations WHERE expires_at < $1",
                               cutoffs["unclaimed"])
            # The feed's outbox holds each reading sent to the medical record, sealed in its
            # Bundle: a copy that goes with the reading, sent or not (the record keeps its
            # own under its rules).
            status = await conn.execute("DELETE FROM record_feed_outbox WHERE created_at < $1",
                                        cutoffs["record_feed"])
            removed["record_feed"] = _deleted(status)
            removed["refresh_tokens"], removed["sessions"] = await _end_sessions(conn)
            # A renewal's answer is kept for a device that asks again with the same CSR:
            # of no use once the certificate it holds has expired.
            status = await conn.execute(
                """DELETE FROM certificate_renewals r USING device_certificates c
                   WHERE c.serial = r.serial AND c.expires_at < $1""", cutoffs["renewals"])
            removed["renewals"] = _deleted(status)
            # Takeovers are a security record, kept as long as the audit log.
            status = await conn.execute("DELETE FROM client_id_takeovers WHERE at < $1",
                                        cutoffs["takeovers"])
            removed["takeovers"] = _deleted(status)
        removed["audit"] = await self._audit.cut_before(cutoffs["audit"])
        async with self._pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO retention_runs (kind, cutoff, removed) VALUES ($1, $2, $3)",
                [(kind, cutoffs[kind], n) for kind, n in removed.items() if n])
        self.stats.retention_runs += 1
        self.stats.removed.update(removed)
        if any(removed.values()):
            log.info("retention removed %s", removed)
        return removed

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                report = await self.run_once()
                if report and (report.days_rolled_up or report.segments_compacted):
                    log.info("maintenance: %s", report)
            except (StorageError, asyncpg.PostgresError, OSError):
                log.exception("maintenance pass failed; retrying next interval")
            await asyncio.sleep(interval_s)


async def _end_sessions(conn: asyncpg.Connection) -> tuple[int, int]:
    """Delete the refresh tokens past their expiry (refused whatever their state), then the
    sessions that have ended: revoked, or left without a token; (tokens, sessions). A live
    session keeps its used tokens until they expire: one presented again revokes it
    (storage/sessions.py, which reads expiry against the database's clock, as here). Who
    signed in and when stays in the audit log, under its own retention."""
    async with conn.transaction():
        tokens = await conn.execute("DELETE FROM refresh_tokens WHERE expires_at < now()")
        sessions = await conn.execute(
            """DELETE FROM sessions s WHERE s.revoked_at IS NOT NULL
                   OR NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.session_id = s.id)""")
    return _deleted(tokens), _deleted(sessions)


def _deleted(status: str) -> int:
    """The row count of a DELETE's command tag ("DELETE 3")."""
    return int(status.split()[-1])
