"""Storage, everything counted: bytes on disk per stored sample for three device cadences, on
both engines side by side in one run, with a one-day read and a one-year summary.

Counted per sample: the segments (every partition or chunk), the message ledger (its rows
per message, ``ingested_messages``, and its runs of numbers, ``ingested_ranges``) and the
rollups, each with its indexes and TOAST (``pg_total_relation_size``), after rollups and
compaction, and after VACUUM FULL so that the space compaction freed (which PostgreSQL
reuses, but keeps in the files) is not counted as data. Each message is received a second
after its last sample, and the seeded days end a day before the maintenance pass, so the
ledger is measured past its exact horizon (24 hours by default) as a year of data is: in
steady state the last day's rows add about (their bytes per sample, ~29 at the 5-second
cadence) x 1/365 = 0.08 bytes per sample. Each table's share goes to stderr.

Cadences, each seeded into a database of its own through ``Store.ingest`` (the bridge's
write path, without MQTT):
- ``watch-5s``: 1 Hz heart rate sent every 5 seconds (the simulator's watches);
- ``watch-60s``: 1 Hz heart rate sent every 60 seconds;
- ``scale-daily``: one weighing a day per scale (no 1 Hz target applies).

``day_read_ms``: the median of one patient's whole day of raw samples, over five patients.
``year_summary_ms``: the median of a one-year daily summary (``read_stats`` at 1d) of one
patient with a year of per-minute heart rate, rolled up; measured once per engine (its own
database) and printed on each of that engine's lines.

Engines: native partitions on the PostgreSQL found as usual (HEALTHIOT_PG_BIN_DIR or
Debian's), TimescaleDB on the PostgreSQL of TIMESCALEDB_BIN (for example the bin directory
../shared/timescaledb/install.sh prints); without it, the TimescaleDB lines say so.
BENCH_WATCHES and BENCH_DAYS scale the seeding (default 5 watches, 2 days). Run with
`make bench` or `python bench/bench_storage.py`. Output, one line per engine and cadence:
``storage: engine=<e> cadence=<c> bytes_per_sample=<x> day_read_ms=<n> year_summary_ms=<n>``
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

from api import totp
from healthiot.localservers import PostgresServer, free_port
from healthiot.services import Core, open_core
from storage import partitioning
from storage.maintenance import Maintenance, RetentionPolicy
from storage.migrate import migrate
from storage.reads import read_stats
from storage.rollups import Rollups
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn

WATCHES = int(os.environ.get("BENCH_WATCHES", "5"))
DAYS = int(os.environ.get("BENCH_DAYS", "2"))
BATCH = 500  # messages per ingest transaction, as the bridge batches them
rng = np.random.default_rng(7)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Cadence:
    name: str
    metric: str
    message_s: int  # seconds of samples per message
    sample_s: int  # seconds between samples


CADENCES = (Cadence("watch-5s", "heart_rate", 5, 1), Cadence("watch-60s", "heart_rate", 60, 1),
            Cadence("scale-daily", "body_weight", 86_400, 86_400))


def heart_rate(seconds: int, start_s: int) -> np.ndarray:
    """Integer bpm, as watches report: resting level, circadian swing, activity, noise."""
    t = start_s + np.arange(seconds)
    circadian = 6 * np.sin(2 * np.pi * ((t % 86_400) / 86_400 - 0.25))
    bouts = np.repeat(rng.uniform(0, 40, seconds // 600 + 1), 600)[:seconds]
    activity = np.convolve(bouts * (rng.random(seconds) < 0.3), np.ones(120) / 120, "same")
    return np.round(62 + circadian + activity + rng.normal(0, 1.5, seconds))


def values(cadence: Cadence, n: int, start_s: int) -> np.ndarray:
    if cadence.metric == "heart_rate":
        return heart_rate(n, start_s)
    return np.round(72.0 + np.cumsum(rng.normal(0, 0.1, n)), 1)  # kg, 0.1 kg grid


def messages(cadence: Cadence, patient: uuid.UUID, device: str, start: dt.datetime
             ) -> Iterator[MessageIn]:
    """The device's messages, each received a second after its last sample."""
    start_s = int(start.timestamp())
    total = DAYS * 86_400 // cadence.sample_s
    v = values(cadence, total, start_s)
    per = cadence.message_s // cadence.sample_s
    for seq, i in enumerate(range(0, total, per)):
        t = (start_s + (i + np.arange(per, dtype=np.int64)) * cadence.sample_s) * 1000
        received = _EPOCH + dt.timedelta(milliseconds=int(t[-1]) + 1000)
        yield MessageIn(device, seq, received, [SegmentIn(
            patient, cadence.metric, Samples(t, v[i:i + per], np.zeros(per, np.uint8)))], 0,
            first_sample_at=_EPOCH + dt.timedelta(milliseconds=int(t[0])),
            last_sample_at=_EPOCH + dt.timedelta(milliseconds=int(t[-1])))


async def seed(core: Core, cadence: Cadence, start: dt.datetime) -> tuple[list[uuid.UUID], int]:
    patients, samples = [], 0
    for w in range(WATCHES):
        patient = (await core.patients.create(f"{cadence.name}-{w}", "x",
                                              totp.new_secret())).id
        patients.append(patient)
        batch: list[MessageIn] = []
        for message in messages(cadence, patient, f"{cadence.name}-{w}", start):
            batch.append(message)
            samples += message.samples
            if len(batch) == BATCH:
                await core.store.ingest(batch)
                batch = []
        if batch:
            await core.store.ingest(batch)
    return patients, samples


LEDGER = ("ingested_messages", "ingested_ranges")


async def stored_bytes(conn: asyncpg.Connection) -> dict[str, int]:
    """Per table: segments (with every partition or chunk), the ledger's two tables and the
    rollups, indexes and TOAST included."""
    rows = await conn.fetch(
        """SELECT t.name, sum(pg_total_relation_size(t.oid)) AS bytes FROM (
               SELECT 'segments' AS name, inhrelid AS oid FROM pg_inherits
               WHERE inhparent = 'segments'::regclass
               UNION SELECT 'segments', 'segments'::regclass::oid
               UNION SELECT 'ingested_messages', 'ingested_messages'::regclass::oid
               UNION SELECT 'ingested_ranges', 'ingested_ranges'::regclass::oid
               UNION SELECT 'rollups', 'rollups'::regclass::oid) AS t GROUP BY t.name""")
    return {r["name"]: int(r["bytes"]) for r in rows}


async def settle(core: Core, now: dt.datetime) -> None:
    """Roll up and compact everything, as the maintenance job does over time."""
    job = Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                      core.audit, RetentionPolicy())
    while True:
        report = await job.run_once(now)
        pending = await core.pool.fetchval("SELECT count(*) FROM segments WHERE NOT rolled_up")
        if not pending and report is not None and not report.segments_compacted:
            return


def timed_ms(runs: list[float]) -> float:
    return round(statistics.median(runs) * 1000, 1)


async def new_database(server: PostgresServer, name: str) -> str:
    admin = await asyncpg.connect(server.dsn, password=server.password)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return server.dsn.rsplit("/", 1)[0] + "/" + name


async def measure_cadence(server: PostgresServer, workdir: Path, cadence: Cadence,
                          now: dt.datetime) -> tuple[str, float, float]:
    """(engine, bytes per sample, day read ms) for one cadence, in a database of its own."""
    dsn = await new_database(server, "bench_" + cadence.name.replace("-", "_"))
    conn = await asyncpg.connect(dsn, password=server.password)
    core = None
    try:
        await migrate(conn)
        engine = await partitioning.mode(conn)
        core = await open_core(dsn, server.password, workdir / "kek.bin", create_kek=True)
        start = now - dt.timedelta(days=DAYS + 1)
        began = time.perf_counter()
        patients, samples = await seed(core, cadence, start)
        await settle(core, now)
        for table in ("segments", *LEDGER, "rollups"):
            await conn.execute(f"VACUUM FULL ANALYZE {table}")
        tables = await stored_bytes(conn)
        per_sample = sum(tables.values()) / samples
        shares = " ".join(f"{t}={n / samples:.3f}" for t, n in sorted(tables.items()))
        rows = await conn.fetchval("SELECT count(*) FROM segments")
        runs = await conn.fetchval("SELECT count(*) FROM ingested_ranges")
        print(f"{engine} {cadence.name}: {samples:,} samples seeded and settled in "
              f"{time.perf_counter() - began:.0f}s; bytes per sample: {shares}; "
              f"{rows} segments, {runs} ledger runs", file=sys.stderr)
        day = start + dt.timedelta(days=1)
        day_runs = []
        for p in patients[:5]:
            t0 = time.perf_counter()
            s = await core.store.read_series(p, cadence.metric, day, day + dt.timedelta(days=1))
            day_runs.append(time.perf_counter() - t0)
            assert len(s) == 86_400 // cadence.sample_s, len(s)
    finally:
        if core is not None:
            await core.pool.close()
        await conn.close()
    return engine, per_sample, timed_ms(day_runs)


async def year_summary_ms(server: PostgresServer, workdir: Path, now: dt.datetime) -> float:
    """One patient with a year of per-minute heart rate, rolled up: a one-year daily
    summary, median of five."""
    dsn = await new_database(server, "bench_year")
    conn = await asyncpg.connect(dsn, password=server.password)
    await migrate(conn)
    await conn.close()
    core = await open_core(dsn, server.password, workdir / "kek.bin", create_kek=True)
    try:
        patient = (await core.patients.create("year", "x", totp.new_secret())).id
        start = now - dt.timedelta(days=365)
        minutes = 365 * 1440
        t = (int(start.timestamp()) + np.arange(minutes, dtype=np.int64) * 60) * 1000
        v = heart_rate(minutes, int(start.timestamp()))
        await core.store.ingest([MessageIn("watch-year", day, now, [SegmentIn(
            patient, "heart_rate", Samples(t[day * 1440:(day + 1) * 1440],
                                           v[day * 1440:(day + 1) * 1440],
                                           np.zeros(1440, np.uint8)))], 0)
            for day in range(365)])
        await settle(core, now)
        rollups = Rollups(core.pool, core.keyring, core.store)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            stats = await read_stats(core.pool, core.store, rollups, patient, "heart_rate",
                                     now - dt.timedelta(days=365),
                                     now - dt.timedelta(hours=now.hour), "1d")
            runs.append(time.perf_counter() - t0)
        assert len(stats) >= 360
    finally:
        await core.pool.close()
    return timed_ms(runs)


async def engine_lines(workdir: Path, bin_dir: str | None, now: dt.datetime) -> list[str]:
    password = secrets.token_urlsafe(16)
    server = PostgresServer(workdir / "pg", port=free_port(), user="bench", password=password,
                            log_file=workdir / "pg.log", bin_dir=bin_dir)
    await server.start()
    try:
        year_ms = await year_summary_ms(server, workdir, now)
        lines = []
        for cadence in CADENCES:
            engine, per_sample, day_ms = await measure_cadence(server, workdir, cadence, now)
            lines.append(f"storage: engine={engine} cadence={cadence.name} "
                         f"bytes_per_sample={per_sample:.3f} day_read_ms={day_ms} "
                         f"year_summary_ms={year_ms}")
            print(lines[-1], flush=True)
    finally:
        server.stop()
    return lines


async def main(workdir: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    native_dir = workdir / "native"
    native_dir.mkdir(mode=0o755)
    await engine_lines(native_dir, os.environ.get("HEALTHIOT_PG_BIN_DIR"), now)
    tsdb_bin = os.environ.get("TIMESCALEDB_BIN")
    if not tsdb_bin:
        print("storage: engine=timescaledb not measured: set TIMESCALEDB_BIN to the bin "
              "directory of a PostgreSQL with TimescaleDB", flush=True)
        return
    tsdb_dir = workdir / "timescaledb"
    tsdb_dir.mkdir(mode=0o755)
    await engine_lines(tsdb_dir, tsdb_bin, now)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="healthiot-bench-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must traverse it when we run as root
        asyncio.run(main(Path(tmp)))
