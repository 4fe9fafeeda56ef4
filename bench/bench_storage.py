"""Storage, measured on a throwaway PostgreSQL: bytes on disk per sample for a week of 1 Hz
heart rate from 100 watches after compaction, next to a naive one-row-per-sample table
measured in the same run; one day read for one patient; a one-year daily summary.

The naive table is measured on one watch-week (604,800 rows): its size per row does not
depend on how many rows there are, and loading 60 million rows would take minutes.
Run with `make bench`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np

from api import totp
from healthiot.localservers import PostgresServer, free_port
from healthiot.services import Core, open_core
from storage.maintenance import Maintenance, RetentionPolicy
from storage.migrate import migrate
from storage.reads import read_stats
from storage.rollups import Rollups
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn

WATCHES = 100
DAYS = 7
HOUR_S = 3600
rng = np.random.default_rng(7)


def heart_rate(seconds: int, start_s: int) -> np.ndarray:
    """Integer bpm, as watches report: resting level, circadian swing, activity, noise."""
    t = start_s + np.arange(seconds)
    circadian = 6 * np.sin(2 * np.pi * ((t % 86_400) / 86_400 - 0.25))
    bouts = np.repeat(rng.uniform(0, 40, seconds // 600 + 1), 600)[:seconds]
    activity = np.convolve(bouts * (rng.random(seconds) < 0.3), np.ones(120) / 120, "same")
    return np.round(62 + circadian + activity + rng.normal(0, 1.5, seconds))


async def seed_watches(core: Core, start: dt.datetime) -> tuple[list[uuid.UUID], int]:
    patients, samples = [], 0
    start_s = int(start.timestamp())
    for w in range(WATCHES):
        patient = (await core.patients.create(f"p{w}", "x", totp.new_secret())).id
        patients.append(patient)
        hr = heart_rate(DAYS * 86_400, start_s)
        messages = []
        for hour in range(DAYS * 24):
            t = (start_s + hour * HOUR_S + np.arange(HOUR_S, dtype=np.int64)) * 1000
            v = hr[hour * HOUR_S:(hour + 1) * HOUR_S]
            messages.append(MessageIn(f"watch-{w}", hour, start, [SegmentIn(
                patient, "heart_rate", Samples(t, v, np.zeros(HOUR_S, np.uint8)))], 0))
            samples += HOUR_S
        for i in range(0, len(messages), 24):
            await core.store.ingest(messages[i:i + 24])
    return patients, samples


async def segments_bytes(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
        " WHERE inhparent = 'segments'::regclass"))


async def naive_bytes_per_row(conn: asyncpg.Connection, patient: uuid.UUID,
                              start: dt.datetime) -> float:
    await conn.execute("""CREATE TABLE naive (patient_id uuid, metric text,
                          t timestamptz, value double precision, flags smallint)""")
    await conn.execute("CREATE INDEX ON naive (patient_id, metric, t)")
    hr = heart_rate(DAYS * 86_400, int(start.timestamp()))
    rows = [(patient, "heart_rate", start + dt.timedelta(seconds=i), float(v), 0)
            for i, v in enumerate(hr)]
    await conn.copy_records_to_table("naive", records=rows)
    await conn.execute("VACUUM ANALYZE naive")
    size = await conn.fetchval("SELECT pg_total_relation_size('naive')")
    return float(size) / len(rows)


async def year_of_minutes(core: Core, now: dt.datetime) -> uuid.UUID:
    """One patient with a year of per-minute heart rate, rolled up."""
    patient = (await core.patients.create("year", "x", totp.new_secret())).id
    start = now - dt.timedelta(days=365)
    minutes = 365 * 1440
    t = (int(start.timestamp()) + np.arange(minutes, dtype=np.int64) * 60) * 1000
    v = heart_rate(minutes, int(start.timestamp()))
    messages = [MessageIn("watch-year", day, now, [SegmentIn(patient, "heart_rate", Samples(
        t[day * 1440:(day + 1) * 1440], v[day * 1440:(day + 1) * 1440],
        np.zeros(1440, np.uint8)))], 0) for day in range(365)]
    await core.store.ingest(messages)
    return patient


def timed_ms(runs: list[float]) -> float:
    return round(statistics.median(runs) * 1000, 1)


async def main(workdir: Path) -> str:
    password = secrets.token_urlsafe(16)
    server = PostgresServer(workdir / "pg", port=free_port(), user="bench", password=password,
                            log_file=workdir / "pg.log")
    await server.start()
    try:
        conn = await asyncpg.connect(server.dsn, password=password)
        await migrate(conn)
        core = await open_core(server.dsn, password, workdir / "kek.bin", create_kek=True)
        now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        start = now - dt.timedelta(days=DAYS + 1)
        began = time.perf_counter()
        patients, samples = await seed_watches(core, start)
        print(f"seeded {samples:,} samples from {WATCHES} watches in "
              f"{time.perf_counter() - began:.0f}s", file=sys.stderr)
        job = Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                          core.audit, RetentionPolicy())
        while (await core.pool.fetchval("SELECT count(*) FROM segments WHERE NOT rolled_up")):
            await job.run_once(now)
        await job.compact(now)
        await conn.execute("VACUUM ANALYZE segments")
        per_sample = await segments_bytes(conn) / samples
        naive = await naive_bytes_per_row(conn, patients[0], start)

        day = start + dt.timedelta(days=2)
        day_runs = []
        for p in patients[:5]:
            t0 = time.perf_counter()
            s = await core.store.read_series(p, "heart_rate", day, day + dt.timedelta(days=1))
            day_runs.append(time.perf_counter() - t0)
            assert len(s) == 86_400
        year_patient = await year_of_minutes(core, now)
        await job.run_once(now)
        while (await core.pool.fetchval("SELECT count(*) FROM segments WHERE NOT rolled_up")):
            await job.run_once(now)
        rollups = Rollups(core.pool, core.keyring, core.store)
        year_runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            stats = await read_stats(core.pool, core.store, rollups, year_patient,
                                     "heart_rate", now - dt.timedelta(days=365),
                                     now - dt.timedelta(hours=now.hour), "1d")
            year_runs.append(time.perf_counter() - t0)
        assert len(stats) >= 360
        await core.pool.close()
        await conn.close()
    finally:
        server.stop()
    return (f"storage: bytes_per_sample={per_sample:.3f} naive_ratio={naive / per_sample:.1f} "
            f"day_read_ms={timed_ms(day_runs)} year_summary_ms={timed_ms(year_runs)}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="healthiot-bench-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must traverse it when we run as root
        line = asyncio.run(main(Path(tmp)))
    print(line)
