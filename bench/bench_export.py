"""A year of one patient exported as FHIR Bulk Data: size, time and memory (issue 21).

Seeds one patient with a simulated year of a watch and a scale, written straight through the
storage layer (``Store.ingest``, the bridge's write path, without MQTT), one message a day
per device:
- heart rate at 1 Hz (integer bpm: resting level, circadian swing, activity, noise);
- RR intervals for the first minute of every five (as the simulated watch records them),
  each beat one interval after the one before, intervals to 0.1 ms;
- SpO2, skin temperature (0.1 degC), steps once a minute; sleep minutes at night;
- a few heart-rate spikes a day flagged HR_SPIKE (exported apart, with their flag);
- one weighing a day from a scale.

Then, through the real API on a local port: kick-off, status, and every NDJSON file
fetched and counted as it streams in (nothing kept). Measured:
- ``year_mb``: the bytes of all the files (MB = 10^6 bytes);
- ``year_s``: from the kick-off to the last byte of the last file;
- ``peak_rss_mb``: the growth of this process's resident memory during the export (its
  peak, sampled every 20 ms, minus the level just before the kick-off): API and client.

Targets: year_mb <= 150, year_s <= 60, peak_rss_mb <= 50. BENCH_EXPORT_DAYS changes the
simulated span (default 365). Run with `make bench` or `python bench/bench_export.py`.
Last line: ``export: year_mb=<n> year_s=<n> peak_rss_mb=<n>``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import asyncpg
import numpy as np
from aiohttp import web

from api import totp
from api.app import create_app
from api.requests import ApiDeps
from api.tokens import TokenService
from devices.ca import new_key
from healthiot.localservers import PostgresServer, free_port
from healthiot.services import Core, open_core
from storage.migrate import migrate
from storage.segments import Samples
from storage.store import MessageIn, SegmentIn
from vitals.normalise import Flag

DAYS = int(os.environ.get("BENCH_EXPORT_DAYS", "365"))
DAY_S = 86_400
RR_EVERY_S, RR_FOR_S = 300, 60  # RR intervals: the first minute of every five
SPIKES_PER_DAY = 5
SEED_PROCESSES = int(os.environ.get("BENCH_SEED_PROCESSES", str(os.cpu_count() or 1)))
rng = np.random.default_rng(21)


def heart_rate(start_s: int) -> np.ndarray:
    """A day of integer bpm at 1 Hz."""
    t = start_s + np.arange(DAY_S)
    circadian = 6 * np.sin(2 * np.pi * ((t % DAY_S) / DAY_S - 0.25))
    bouts = np.repeat(rng.uniform(0, 40, DAY_S // 600 + 1), 600)[:DAY_S]
    activity = np.convolve(bouts * (rng.random(DAY_S) < 0.3), np.ones(120) / 120, "same")
    return np.round(62 + circadian + activity + rng.normal(0, 1.5, DAY_S))


def rr_intervals(start_s: int, bpm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(beat times ms, intervals ms to 0.1) for the first minute of every five."""
    times, values = [], []
    for run in range(DAY_S // RR_EVERY_S):
        at_s = run * RR_EVERY_S
        mean = 60_000.0 / max(float(bpm[at_s]), 30.0)
        rr = np.round(mean * (1 + 0.04 * np.sin(np.arange(200) * 1.3)
                              + rng.normal(0, 0.02, 200)), 1)
        offsets = np.cumsum(np.round(rr).astype(np.int64))
        keep = offsets < RR_FOR_S * 1000
        times.append((start_s + at_s) * 1000 + offsets[keep])
        values.append(rr[keep])
    return np.concatenate(times), np.concatenate(values)


def watch_day(patient: uuid.UUID, day: int, start_s: int) -> list[SegmentIn]:
    bpm = heart_rate(start_s)
    seconds = (start_s + np.arange(DAY_S, dtype=np.int64)) * 1000
    flags = np.zeros(DAY_S, np.uint8)
    spikes = rng.choice(DAY_S, SPIKES_PER_DAY, replace=False)
    bpm[spikes] += 60
    flags[spikes] = Flag.HR_SPIKE
    rr_t, rr_v = rr_intervals(start_s, bpm)
    minutes = seconds[::60]
    hour = (np.arange(1440) // 60)
    asleep = (hour >= 23) | (hour < 7)
    spo2 = np.minimum(100, np.round(97.5 + rng.normal(0, 0.7, 1440)))
    skin = np.round(33.0 + 0.8 * np.sin(np.arange(1440) / 229) + rng.normal(0, 0.1, 1440), 1)
    steps = np.where(asleep, 0, rng.integers(0, 120, 1440)).astype(np.float64)
    zeros = np.zeros(1440, np.uint8)
    p = patient
    return [
        SegmentIn(p, "heart_rate", Samples(seconds, bpm, flags)),
        SegmentIn(p, "rr_interval", Samples(rr_t, rr_v, np.zeros(len(rr_t), np.uint8))),
        SegmentIn(p, "spo2", Samples(minutes, spo2, zeros)),
        SegmentIn(p, "skin_temperature", Samples(minutes, skin, zeros)),
        SegmentIn(p, "steps", Samples(minutes, steps, zeros)),
        SegmentIn(p, "sleep_duration", Samples(minutes[asleep], np.ones(int(asleep.sum())),
                                               zeros[asleep])),
    ]


async def seed_days(core: Core, patient: uuid.UUID, first: dt.datetime, now: dt.datetime,
                    days: range) -> int:
    samples = 0
    for day in days:
        start_s = int(first.timestamp()) + day * DAY_S
        segments = watch_day(patient, day, start_s)
        weight = Samples(np.array([(start_s + 7 * 3600) * 1000], np.int64),
                         np.array([round(72 + rng.normal(0, 0.3), 1)]), np.zeros(1, np.uint8))
        await core.store.ingest([
            MessageIn("watch-year", day, now, segments, 0),
            MessageIn("scale-year", day, now, [SegmentIn(patient, "body_weight", weight)], 0)])
        samples += sum(len(s.samples) for s in segments) + 1
    return samples


def seed_worker(dsn: str, password: str, kek: Path, patient: uuid.UUID, first: dt.datetime,
                now: dt.datetime, days: range) -> int:
    """A process of its own seeding ``days``: the compression of the segments (zlib, in
    the storage layer) is the cost of seeding, and it takes one core per process."""
    global rng
    rng = np.random.default_rng(days.start)

    async def run() -> int:
        core = await open_core(dsn, password, kek)
        try:
            return await seed_days(core, patient, first, now, days)
        finally:
            await core.pool.close()
    return asyncio.run(run())


async def seed(core: Core, dsn: str, password: str, kek: Path, now: dt.datetime
               ) -> tuple[uuid.UUID, int]:
    """The patient and their year, the first day here (it creates the data key), the other
    days split among SEED_PROCESSES processes."""
    patient = (await core.patients.create("year", "x", totp.new_secret())).id
    first = (now - dt.timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    samples = await seed_days(core, patient, first, now, range(0, 1))
    step = -(-(DAYS - 1) // SEED_PROCESSES)
    parts = [range(a, min(a + step, DAYS)) for a in range(1, DAYS, step)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(len(parts) or 1, mp_context=mp.get_context("spawn")) as pool:
        counts = await asyncio.gather(*(loop.run_in_executor(
            pool, seed_worker, dsn, password, kek, patient, first, now, part)
            for part in parts))
    return patient, samples + sum(counts)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def sample_rss(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except TimeoutError:
            pass


async def export(base: str, token: str) -> tuple[int, dict[str, int]]:
    """Kick-off, status, every file streamed and counted: (bytes, bytes per type)."""
    auth = {"Authorization": f"Bearer {token}"}
    sizes: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{base}/v1/me/$export",
                            headers={**auth, "Prefer": "respond-async"}) as resp:
            assert resp.status == 202, await resp.text()
            status_url = resp.headers["Content-Location"]
        async with http.get(status_url, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            manifest = await resp.json()
        for item in manifest["output"]:
            size = 0
            async with http.get(item["url"], headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
            sizes[item["type"]] = size
        async with http.delete(status_url, headers=auth) as resp:
            assert resp.status == 202
    return sum(sizes.values()), sizes


async def main(workdir: Path) -> None:
    password = secrets.token_urlsafe(16)
    server = PostgresServer(workdir / "pg", port=free_port(), user="bench", password=password,
                            log_file=workdir / "pg.log", bin_dir=os.environ.get(
                                "HEALTHIOT_PG_BIN_DIR"))
    await server.start()
    core = None
    runner = None
    try:
        conn = await asyncpg.connect(server.dsn, password=password)
        await migrate(conn)
        await conn.close()
        core = await open_core(server.dsn, password, workdir / "kek.bin", create_kek=True)
        now = dt.datetime.now(dt.UTC)
        began = time.perf_counter()
        patient, samples = await seed(core, server.dsn, password, workdir / "kek.bin", now)
        print(f"export: {samples:,} samples over {DAYS} days seeded in "
              f"{time.perf_counter() - began:.0f}s", file=sys.stderr, flush=True)
        tokens = TokenService(new_key(), issuer="https://bench", audience="bench")
        app = create_app(ApiDeps(core.pool, core.keyring, core.store, core.registry,
                                 core.patients, core.audit, tokens))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        token = tokens.issue(str(patient), methods=["pwd", "otp"])
        before = rss_mb()
        peak, stop = [before], asyncio.Event()
        sampler = asyncio.create_task(sample_rss(peak, stop), name="rss-sampler")
        t0 = time.perf_counter()
        total, sizes = await export(f"http://127.0.0.1:{port}", token)
        seconds = time.perf_counter() - t0
        stop.set()
        await sampler
        print("export: bytes per type " + ", ".join(f"{k}={v:,}" for k, v in sizes.items())
              + f"; rss before {before:.0f} MB, peak {peak[0]:.0f} MB", file=sys.stderr)
        scale = 365 / DAYS  # a shorter run is scaled to a year
        print(f"export: year_mb={total * scale / 1e6:.1f} year_s={seconds * scale:.1f} "
              f"peak_rss_mb={peak[0] - before:.1f}", flush=True)
    finally:
        if runner is not None:
            await runner.cleanup()
        if core is not None:
            await core.pool.close()
        server.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="healthiot-bench-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must traverse it when we run as root
        asyncio.run(main(Path(tmp)))
