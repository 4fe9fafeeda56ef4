"""Encrypted storage on a real PostgreSQL: partitions, dumps that reveal nothing, rows that
cannot swap ciphertexts, KEK rotation under load, rollups, compaction, retention, erasure
that reaches a dump taken before it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import subprocess
import uuid
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from healthiot.localservers import find_binary
from healthiot.services import open_core
from storage import partitioning
from storage.crypto import LocalKeyFile, open_sealed
from storage.erasure import erase_patient
from storage.errors import IntegrityError, KeyUnavailable
from storage.maintenance import Maintenance, RetentionPolicy
from storage.reads import read_stats
from storage.rollups import Rollups, compute
from storage.segments import Samples
from storage.sessions import RefreshRefused, Sessions
from storage.store import MessageIn, QuarantineIn, SegmentIn, _segment_aad
from tests.conftest import new_patient, wait_until

DAY_MS = 86_400_000
# A timestamp's seconds, masked in dumps: "05:08:54.603726" spells 54.60 by chance.
TIMESTAMP_SECONDS = re.compile(r"\d\d:\d\d:\d\d\.\d+")
# Values no clock, id or counter would produce by chance: if the dump shows them, it leaks.
HR_VALUES = np.array([61.734521, 72.918273, 88.127364, 54.603918])


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


async def _ingest(core, patient: uuid.UUID, metric: str, t: np.ndarray,  # type: ignore[no-untyped-def]
                  v: np.ndarray, device: str = "watch-1", seq: list[int] | None = None) -> None:
    seq = seq or [int(uuid.uuid4().int % 2**62)]
    await core.store.ingest([MessageIn(device, seq[0], dt.datetime.now(dt.UTC), [SegmentIn(
        patient, metric, Samples(t.astype(np.int64), v.astype(np.float64),
                                 np.zeros(len(t), np.uint8)))], 0)])


async def _seed_week(core, patient: uuid.UUID, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    """A week of heart rate, one message per hour, as devices send it."""
    start = _ms(now) - 7 * DAY_MS
    for hour in range(7 * 24):
        t = start + hour * 3_600_000 + np.arange(60, dtype=np.int64) * 60_000
        await _ingest(core, patient, "heart_rate", t, np.resize(HR_VALUES, 60), seq=[hour])


def _pg_dump(dsn: str, password: str, out: Path) -> str:
    env = {**os.environ, "PGPASSWORD": password}
    subprocess.run([find_binary("pg_dump"), "--no-owner", "-f", str(out), dsn], env=env,
                   check=True, timeout=120)
    return out.read_text()


async def test_segments_live_in_the_time_partitions_of_the_engine_in_use(  # type: ignore[no-untyped-def]
        core, db_engine) -> None:
    """Native: a month's partition. TimescaleDB: a chunk of the 7-day hypertable."""
    patient, _, _ = await new_patient(core, "parted")
    now = dt.datetime.now(dt.UTC)
    await _ingest(core, patient, "heart_rate", np.array([_ms(now)]), np.array([70.0]))
    async with core.pool.acquire() as conn:
        assert await partitioning.mode(conn) == db_engine
        where = await conn.fetchval("SELECT tableoid::regclass::text FROM segments")
        if db_engine == "native":
            assert where == partitioning.partition_name(partitioning.month_start(now))
        else:
            assert await conn.fetchval(
                "SELECT time_interval FROM timescaledb_information.dimensions"
                " WHERE hypertable_name = 'segments' AND column_name = 'start_at'"
            ) == dt.timedelta(days=7)
            chunks = await conn.fetch("SELECT chunk_schema || '.' || chunk_name AS c FROM"
                                      " timescaledb_information.chunks"
                                      " WHERE hypertable_name = 'segments'")
            assert [r["c"] for r in chunks] == [where]


async def test_a_dump_after_a_week_reveals_no_value(core, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "dumped")
    now = dt.datetime.now(dt.UTC)
    await _seed_week(core, patient, now)
    await Rollups(core.pool, core.keyring, core.store).roll_up_pending(limit=100)
    dump = await asyncio.to_thread(_pg_dump, database.dsn, database.password,
                                   tmp_path / "dump.sql")
    assert "segments" in dump and len(dump) > 50_000  # the data is there, sealed
    dump = TIMESTAMP_SECONDS.sub("SS.ssssss", dump)
    for value in HR_VALUES:
        for text in (f"{value}", f"{value:.4f}", f"{value:.2f}"):
            assert text not in dump
        for raw in (np.float64(value).tobytes(), np.float32(value).tobytes()):
            assert raw.hex() not in dump
    mean = float(np.mean(HR_VALUES))
    assert f"{mean:.3f}" not in dump  # nor the rollups' means


async def test_a_ciphertext_copied_into_another_row_does_not_open(core) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "swapped")
    now = _ms(dt.datetime.now(dt.UTC))
    await _ingest(core, patient, "heart_rate", np.array([now - 60_000]), np.array([60.0]))
    await _ingest(core, patient, "heart_rate", np.array([now]), np.array([150.0]))
    ids = [r["id"] for r in await core.pool.fetch("SELECT id FROM segments ORDER BY start_at")]
    await core.pool.execute(
        "UPDATE segments SET sealed = (SELECT sealed FROM segments WHERE id = $1)"
        " WHERE id = $2", ids[1], ids[0])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with pytest.raises(IntegrityError):
        await core.store.read_series(patient, "heart_rate", start,
                                     start + dt.timedelta(hours=2))


async def test_kek_rotation_under_read_load(database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    owners = tmp_path / "owners"
    core = await open_core(database.dsn, database.password, old, create_kek=True,
                           owner_keys_dir=owners)
    patients = [(await new_patient(core, f"rot{i}"))[0] for i in range(20)]
    now = dt.datetime.now(dt.UTC)
    for p in patients:
        await _ingest(core, p, "heart_rate", np.array([_ms(now) - 1000]), np.array([66.0]))
    await core.pool.close()
    LocalKeyFile(new, create=True)
    rotating = await open_core(database.dsn, database.password, new,
                               owner_keys_dir=owners, previous_kek_files=(old,))
    readers_core = await open_core(database.dsn, database.password, new,
                                   owner_keys_dir=owners, previous_kek_files=(old,))
    reads, stop = [0], asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            for p in patients:
                readers_core.keyring._cache.clear()
                readers_core.keyring._current.clear()
                s = await readers_core.store.read_series(p, "heart_rate", now - dt.timedelta(
                    minutes=5), now + dt.timedelta(minutes=5))
                assert s.value.tolist() == [66.0]
                reads[0] += 1
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(reader()) for _ in range(3)]
    await asyncio.sleep(0.05)
    async with rotating.pool.acquire() as conn:
        done = await rotating.keyring.rewrap_all(conn, LocalKeyFile(new))

    async def read_enough() -> bool:  # a loaded machine reads slower: some 40 reads in all
        return reads[0] > 40
    await wait_until(read_enough)
    stop.set()
    await asyncio.gather(*tasks)  # a failed read fails the test here
    assert done >= 20 and reads[0] > 40
    assert await rotating.pool.fetchval(
        "SELECT count(*) FROM data_keys WHERE kek_id <> $1", LocalKeyFile(new).kek_id) == 0
    # Afterwards the new KEK alone opens everything.
    only_new = await open_core(database.dsn, database.password, new, owner_keys_dir=owners)
    s = await only_new.store.read_series(patients[0], "heart_rate", now - dt.timedelta(
        minutes=5), now + dt.timedelta(minutes=5))
    assert s.value.tolist() == [66.0]
    for c in (rotating, readers_core, only_new):
        await c.pool.close()


async def test_rollups_agree_with_raw_and_follow_late_data(core) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "rolled")
    now = dt.datetime.now(dt.UTC)
    day0 = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC) - dt.timedelta(days=3)
    t = _ms(day0) + np.arange(0, 3 * DAY_MS, 600_000, dtype=np.int64)
    v = 60 + (np.arange(len(t)) % 37).astype(np.float64)
    await _ingest(core, patient, "heart_rate", t, v)
    rollups = Rollups(core.pool, core.keyring, core.store)
    start, end = day0, day0 + dt.timedelta(days=3)

    async def read(resolution: str):  # type: ignore[no-untyped-def]
        return await read_stats(core.pool, core.store, rollups, patient, "heart_rate", start,
                                end, resolution)

    expected_hours = compute(t, v, 3_600_000)
    before = await read("1h")  # nothing rolled up yet: computed from raw
    assert await rollups.roll_up_pending() >= 3
    after = await read("1h")  # now from the sealed rollups
    for got in (before, after):
        assert got.t_ms.tolist() == expected_hours.t_ms.tolist()
        assert np.allclose(got.mean, expected_hours.mean)
    days = await read("1d")
    assert days.count.tolist() == [144.0, 144.0, 144.0]
    # A late reading for day 2: the read sees it at once, the next pass folds it in.
    await _ingest(core, patient, "heart_rate", np.array([_ms(day0) + DAY_MS + 1]),
                  np.array([200.0]), device="watch-2")
    assert (await read("1d")).count.tolist() == [144.0, 145.0, 144.0]
    await rollups.roll_up_pending()
    assert (await read("1d")).maximum.tolist()[1] == 200.0


async def test_raw_and_one_minute_reads_give_the_stored_values(core) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "minutes")
    now = dt.datetime.now(dt.UTC)
    m0 = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC) - dt.timedelta(hours=2)
    s = 1000
    # Two watches; the second repeats one reading of the first (a duplicate to drop) and
    # has its own at 80 s (not a duplicate: another value). 40 s is flagged as an artefact.
    # -1 s and 240 s lie outside [m0, m0 + 4 min).
    sent = {"watch-1": ([-1, 0, 20, 40, 60, 80], [10, 60, 62, 64, 70, 72], [0, 0, 0, 1, 0, 0]),
            "watch-2": ([20, 80, 100, 180, 240], [62, 73, 74, 80, 90], [0, 0, 0, 0, 0])}
    for seq, (device, (t, v, f)) in enumerate(sent.items()):
        samples = Samples(_ms(m0) + np.array(t, np.int64) * s, np.array(v, np.float64),
                          np.array(f, np.uint8))
        await core.store.ingest([MessageIn(device, seq, now, [
            SegmentIn(patient, "heart_rate", samples)], 0)])
    start, end = m0, m0 + dt.timedelta(minutes=4)

    raw = await core.store.read_series(patient, "heart_rate", start, end)
    assert ((raw.t_ms - _ms(m0)) // s).tolist() == [0, 20, 40, 60, 80, 80, 100, 180]
    assert raw.value.tolist() == [60, 62, 64, 70, 72, 73, 74, 80]
    assert raw.flags.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]  # raw keeps flagged samples

    rollups = Rollups(core.pool, core.keyring, core.store)
    minutes = await read_stats(core.pool, core.store, rollups, patient, "heart_rate", start,
                               end, "1m")
    # Per minute, flagged samples left out; minute 2 had none, so it has no bucket.
    clean = [[60, 62], [70, 72, 73, 74], [80]]
    assert ((minutes.t_ms - _ms(m0)) // 60_000).tolist() == [0, 1, 3]
    assert minutes.count.tolist() == [len(c) for c in clean]
    assert minutes.minimum.tolist() == [min(c) for c in clean]
    assert minutes.maximum.tolist() == [max(c) for c in clean]
    assert minutes.total.tolist() == [sum(c) for c in clean]
    assert np.allclose(minutes.mean, [np.mean(c) for c in clean], rtol=0, atol=1e-12)
    assert np.allclose(minutes.std, [np.std(c) for c in clean], rtol=0, atol=1e-12)


def _maintenance(core, policy: RetentionPolicy) -> Maintenance:  # type: ignore[no-untyped-def]
    """The maintenance job as the daemon builds it."""
    return Maintenance(core.pool, core.store, Rollups(core.pool, core.keyring, core.store),
                       core.audit, policy)


def _yesterday(now: dt.datetime) -> dt.datetime:
    """The start of the UTC day before ``now``'s: a day the maintenance pass completes."""
    return dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC) - dt.timedelta(days=1)


async def test_compaction_merges_small_segments_and_keeps_every_sample(core) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "compact")
    now = dt.datetime.now(dt.UTC)
    day = _yesterday(now)
    for i in range(30):
        t = _ms(day) + i * 60_000 + np.arange(10, dtype=np.int64) * 1000
        await _ingest(core, patient, "heart_rate", t, np.full(10, 60.0 + i), seq=[i])
    # The same message stored twice under two sequence numbers: a duplicate to drop.
    await _ingest(core, patient, "heart_rate", _ms(day) + np.arange(10, dtype=np.int64) * 1000,
                  np.full(10, 60.0), seq=[99])
    window = (day, day + dt.timedelta(days=1))
    before = await core.store.read_series(patient, "heart_rate", *window)
    job = _maintenance(core, RetentionPolicy())
    await job.run_once(now)
    assert await core.pool.fetchval("SELECT count(*) FROM segments") == 1
    after = await core.store.read_series(patient, "heart_rate", *window)
    assert after.t_ms.tolist() == before.t_ms.tolist() and len(after) == 300


async def _zlib_levels(core, patient: uuid.UUID) -> list[int]:  # type: ignore[no-untyped-def]
    """The FLEVEL of each of the patient's stored segments: 0 fastest .. 3 smallest."""
    levels = []
    async with core.pool.acquire() as conn:
        for row in await conn.fetch("SELECT * FROM segments WHERE patient_id = $1", patient):
            key = await core.keyring.get(conn, str(patient), row["key_version"])
            blob = open_sealed(key, row["sealed"], _segment_aad(
                row["id"], patient, row["metric"], row["device_id"], row["start_at"],
                row["end_at"], row["samples"], row["key_version"]))
            levels.append(blob[1] >> 6)  # zlib's FLG byte
    return levels


async def test_ingestion_compresses_fast_and_compaction_small(core) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "zlib")
    now = dt.datetime.now(dt.UTC)
    day = _yesterday(now)
    for i in range(3):
        t = _ms(day) + i * 60_000 + np.arange(60, dtype=np.int64) * 1000
        await _ingest(core, patient, "heart_rate", t, 60.0 + np.arange(60) % 7, seq=[i])
    assert await _zlib_levels(core, patient) == [0, 0, 0]  # level 1, as the bridge writes
    job = _maintenance(core, RetentionPolicy())
    await job.run_once(now)
    assert await _zlib_levels(core, patient) == [3]  # level 9, what stays


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    """The month partitions (native) or chunks (TimescaleDB) that hold segments now."""
    rows = await conn.fetch(
        """SELECT c.oid::regclass::text AS name FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'segments'::regclass""")
    return {r["name"] for r in rows}


async def test_retention_drops_old_partitions_or_chunks_and_records_it(  # type: ignore[no-untyped-def]
        core, db_engine) -> None:
    patient, _, _ = await new_patient(core, "old")
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(days=400)
    async with core.pool.acquire() as conn:
        if db_engine == "native":
            await partitioning.ensure_months(conn, now, since=partitioning.month_start(old))
        before = await _partitions(conn)
    await _ingest(core, patient, "heart_rate", np.array([_ms(old)]), np.array([70.0]))
    await _ingest(core, patient, "heart_rate", np.array([_ms(now)]), np.array([71.0]))
    old_part = await core.pool.fetchval(
        "SELECT tableoid::regclass::text FROM segments WHERE start_at < now() - interval"
        " '1 year'")
    if db_engine == "native":
        assert old_part == partitioning.partition_name(partitioning.month_start(old))
        assert old_part in before
    else:
        assert old_part not in before  # the chunk came with the row
    await core.pool.execute(
        "INSERT INTO quarantine (received_at, topic, reason, detail, sealed, key_owner,"
        " key_version) VALUES (now() - interval '40 days', 't', 'r', 'd', '\\x00',"
        " 'system:quarantine', 1)")
    job = _maintenance(core, RetentionPolicy(raw_days=365, quarantine_days=30))
    removed = await job.enforce_retention(now)
    assert removed["raw"] == 1 and removed["quarantine"] == 1
    assert not await core.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", old_part)
    async with core.pool.acquire() as conn:
        assert old_part not in await _partitions(conn)
    assert await core.pool.fetchval("SELECT count(*) FROM segments") == 1
    kinds = {r["kind"] for r in await core.pool.fetch("SELECT kind FROM retention_runs")}
    assert {"raw", "quarantine"} <= kinds


async def test_retention_removes_rollups_whose_whole_window_has_passed(core) -> None:  # type: ignore[no-untyped-def]
    patient, _, _ = await new_patient(core, "summarised")
    now = dt.datetime(2024, 6, 15, 12, tzinfo=dt.UTC)
    policy = RetentionPolicy(raw_days=3650, rollups_days=40)
    cutoff = now - dt.timedelta(days=policy.rollups_days)  # 2024-05-06 12:00
    days = [dt.datetime(2024, 3, 10, 12, tzinfo=dt.UTC), cutoff - dt.timedelta(days=1),
            cutoff - dt.timedelta(hours=6)]
    for i, moment in enumerate(days):
        await _ingest(core, patient, "heart_rate", np.array([_ms(moment)]),
                      np.array([60.0 + i]), seq=[i])
    job = _maintenance(core, policy)
    report = await job.run_once(now)
    assert report is not None and report.days_rolled_up == 3
    # Gone: the hours of 10 March and of 5 May (that day ended 12 h before the cutoff) and
    # the days of March. Kept: the hours of 6 May, a day that straddles the cutoff, and the
    # days of May.
    assert report.removed == {"raw": 0, "rollups": 3, "quarantine": 0, "unclaimed": 0,
                              "record_feed": 0, "refresh_tokens": 0, "sessions": 0,
                              "renewals": 0,
                              "takeovers": 0, "audit": 0}
    left = await core.pool.fetch(
        "SELECT resolution, window_start FROM rollups ORDER BY 1, 2")
    assert [(r["resolution"], r["window_start"]) for r in left] == [
        ("1d", dt.datetime(2024, 5, 1, tzinfo=dt.UTC)),
        ("1h", dt.datetime(2024, 5, 6, tzinfo=dt.UTC))]
    run = await core.pool.fetchrow("SELECT cutoff, removed FROM retention_runs"
                                   " WHERE kind = 'rollups'")
    assert (run["cutoff"], run["removed"]) == (cutoff, 3)
    # What is left still opens, and the raw samples behind the removed rollups are kept.
    rollups = Rollups(core.pool, core.keyring, core.store)
    hours, _ = await rollups.read(patient, "heart_rate", "1h", cutoff - dt.timedelta(days=2),
                                  now)
    assert hours.mean.tolist() == [62.0]
    assert await core.pool.fetchval("SELECT count(*) FROM segments") == 3


async def test_retention_ends_finished_sessions_and_keeps_what_reuse_detection_needs(
        core) -> None:  # type: ignore[no-untyped-def]
    """A login session leaves nothing behind once it has ended: revoked, or its last refresh
    token expired. A live session keeps its used tokens until they expire (a used one
    presented again revokes the session); the login history is the audit log's."""
    patient, _, _ = await new_patient(core, "sessions")
    sessions = Sessions(core.pool)
    live = await sessions.open(str(patient), ["pwd", "otp"])
    spent = await sessions.rotate(live.refresh_token)  # live.refresh_token is used now
    current = await sessions.rotate(spent.refresh_token)
    revoked = await sessions.open(str(patient), ["pwd", "otp"])
    await sessions.revoke(revoked.session_id, "logout")
    lapsed = await sessions.open(str(patient), ["pwd", "otp"])
    past = "UPDATE refresh_tokens SET expires_at = now() - interval '1 day' WHERE token_hash = $1"
    await core.pool.execute(past, hashlib.sha256(lapsed.refresh_token.encode()).digest())
    await core.pool.execute(past, hashlib.sha256(live.refresh_token.encode()).digest())

    removed = await _maintenance(core, RetentionPolicy()).enforce_retention(
        dt.datetime.now(dt.UTC))
    # The two expired tokens, then the revoked session and the one its token left.
    assert (removed["refresh_tokens"], removed["sessions"]) == (2, 2)
    assert {r["id"] for r in await core.pool.fetch("SELECT id FROM sessions")} == {
        live.session_id}
    assert await core.pool.fetchval("SELECT count(*) FROM refresh_tokens") == 2
    assert await core.pool.fetchval(
        "SELECT removed FROM retention_runs WHERE kind = 'sessions'") == 2
    assert not await sessions.is_active(revoked.session_id)
    assert not await sessions.is_active(lapsed.session_id)
    # The live session goes on, and still catches a copy of a token it spent.
    await sessions.rotate(current.refresh_token)
    with pytest.raises(RefreshRefused) as refused:
        await sessions.rotate(spent.refresh_token)
    assert refused.value.reused and not await sessions.is_active(live.session_id)


async def test_retention_removes_the_record_feeds_copies_of_readings_past_raw_retention(
        core) -> None:  # type: ignore[no-untyped-def]
    """The outbox keeps each reading sent to the medical record, sealed, as its Bundle: a
    copy of the reading, which goes when the reading's own retention ends, sent or not."""
    patient, _, _ = await new_patient(core, "outbox")
    for identifier, state, age_days in (("heart_rate/1", "sent", 400), ("heart_rate/2",
                                        "pending", 400), ("heart_rate/3", "sent", 30)):
        await core.pool.execute(
            "INSERT INTO record_feed_outbox (patient_id, identifier, metric, state,"
            " created_at, key_version, sealed) VALUES ($1, $2, 'heart_rate', $3,"
            " now() - make_interval(days => $4), 1, '\\x00')",
            patient, identifier, state, age_days)
    removed = await _maintenance(core, RetentionPolicy(raw_days=365)).enforce_retention(
        dt.datetime.now(dt.UTC))
    assert removed["record_feed"] == 2
    assert [r["identifier"] for r in await core.pool.fetch(
        "SELECT identifier FROM record_feed_outbox")] == ["heart_rate/3"]
    assert await core.pool.fetchval(
        "SELECT removed FROM retention_runs WHERE kind = 'record_feed'") == 2


async def test_a_dump_taken_before_erasure_cannot_be_opened_after(core, pg_server, database,  # type: ignore[no-untyped-def]
                                                                 tmp_path) -> None:
    erased, _, _ = await new_patient(core, "erased")
    kept, _, _ = await new_patient(core, "kept")
    now = dt.datetime.now(dt.UTC)
    for p in (erased, kept):
        await _ingest(core, p, "heart_rate", np.array([_ms(now) - 1000]), np.array([77.0]))
    dump = tmp_path / "before.sql"
    await asyncio.to_thread(_pg_dump, database.dsn, database.password, dump)
    await erase_patient(core.pool, core.keyring, erased, "test")
    # Restore the old dump into a new database and open it with the same KEK and key dir.
    name = f"restored_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    restored_dsn = database.dsn.rsplit("/", 1)[0] + "/" + name
    # Restored by an administrator (it creates the schema), then opened as the services.
    await asyncio.to_thread(
        subprocess.run, [find_binary("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump),
                         database.admin_dsn.rsplit("/", 1)[0] + "/" + name],
        env={**os.environ, "PGPASSWORD": database.admin_password},
        check=True, timeout=120, capture_output=True)
    kek = tmp_path / "kek.bin"  # the conftest core's KEK and, next to it, its owner keys
    restored = await open_core(restored_dsn, database.password, kek)
    try:
        window = (now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=1))
        assert await restored.pool.fetchval(
            "SELECT count(*) FROM segments WHERE patient_id = $1", erased) == 1  # still there
        with pytest.raises(KeyUnavailable):
            await restored.store.read_series(erased, "heart_rate", *window)
        assert (await restored.store.read_series(kept, "heart_rate", *window)).value.tolist() \
            == [77.0]
    finally:
        await restored.pool.close()
        admin = await asyncpg.connect(pg_server.dsn, password=pg_server.password)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


# Where a patient's id may stay after their erasure: the access trace and the erasure record.
# audit_log_unchained: the audit rows that had no hash when the chain got its key (migration
# 101), kept as found and written by nobody since.
KEPT_AFTER_ERASURE = {"audit_log", "erasures", "audit_log_unchained"}


async def _tables_with_patient_id(conn: asyncpg.Connection) -> list[str]:
    """Every ordinary or partitioned table with a patient_id column (partitions excluded:
    their parent answers for them)."""
    rows = await conn.fetch(
        """SELECT c.table_name FROM information_schema.columns c
           JOIN pg_class k ON k.relname = c.table_name AND NOT k.relispartition
           WHERE c.column_name = 'patient_id' AND c.table_schema = current_schema()
           ORDER BY 1""")
    return [r["table_name"] for r in rows]


async def _rows_of(conn: asyncpg.Connection, patient: uuid.UUID) -> dict[str, int]:
    counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t} WHERE patient_id = $1",  # noqa: S608
                                     patient) for t in await _tables_with_patient_id(conn)}
    counts["data_keys.owner"] = await conn.fetchval(
        "SELECT count(*) FROM data_keys WHERE owner = $1", str(patient))
    counts["sessions.subject"] = await conn.fetchval(
        "SELECT count(*) FROM sessions WHERE subject = $1", str(patient))
    return counts


async def _everything_of(core, patient: uuid.UUID, tag: str) -> None:  # type: ignore[no-untyped-def]
    """One row of every kind a patient has: samples, rollups, a device and what it sent to
    quarantine, a session, an audit trace, a time zone, a source order, the record feed and
    a clinician's consent."""
    now = dt.datetime.now(dt.UTC)
    device = f"watch-{tag}"
    await _ingest(core, patient, "heart_rate", np.array([_ms(now) - 7_200_000]),
                  np.array([70.0]), device=device)
    await Rollups(core.pool, core.keyring, core.store).roll_up_pending()
    clinician = uuid.uuid4()
    async with core.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO devices (id, model, serial, patient_id, state)"
            " VALUES ($1, 'watch', $1, $2, 'paired')", device, patient)
        await conn.execute("INSERT INTO device_pairing_failures (patient_id, device_id)"
                           " VALUES ($1, $2)", patient, device)
        # The ledger's compacted runs of what it sent (migration 170).
        await conn.execute(
            "INSERT INTO ingested_ranges (device_id, epoch, seq_lo, seq_hi, received_from,"
            " received_to, samples, rejected) VALUES ($1, 0, 1, 9, now(), now(), 9, 0)",
            device)
        # A scale of theirs, shared, with a held weighing they dismissed (migration 090).
        scale, reading = f"scale-{tag}", uuid.uuid4()
        await conn.execute(
            "INSERT INTO devices (id, model, serial, patient_id, state)"
            " VALUES ($1, 'scale', $1, $2, 'paired')", scale, patient)
        await conn.execute(
            "INSERT INTO unclaimed_readings (id, device_id, seq, measured_at, held_at, reason,"
            " key_version, sealed) VALUES ($1, $2, 1, now(), now(), 'ambiguous', 1, '\\x00')",
            reading, scale)
        await conn.execute("INSERT INTO unclaimed_dismissals (reading_id, patient_id)"
                           " VALUES ($1, $2)", reading, patient)
        await conn.execute(
            "INSERT INTO quarantine (received_at, device_id, topic, reason, detail, sealed,"
            " key_owner, key_version) VALUES (now(), $1, 't', 'r', 'd', '\\x00', $2, 1)",
            device, str(patient))
        session = uuid.uuid4()
        await conn.execute("INSERT INTO sessions (id, subject, methods) VALUES ($1, $2, '{pwd}')",
                           session, str(patient))
        await conn.execute("INSERT INTO refresh_tokens (token_hash, session_id, expires_at)"
                           " VALUES ($1, $2, now() + interval '1 day')", os.urandom(32), session)
        await conn.execute("INSERT INTO patient_time_zones VALUES ($1, now(), 'Europe/Paris')",
                           patient)
        await conn.execute(
            "INSERT INTO segments_set_aside (id, patient_id, metric, device_id, start_at,"
            " end_at, samples, key_version, sealed, reason) VALUES ($1, $2, 'heart_rate', $3,"
            " now(), now(), 1, 1, '\\x00', 'IntegrityError')", uuid.uuid4(), patient, device)
        await conn.execute("INSERT INTO source_priorities (patient_id, metric, device_ids)"
                           " VALUES ($1, 'heart_rate', ARRAY[$2])", patient, device)
        await conn.execute("INSERT INTO record_feed_consents VALUES ($1, true, '\\x00', 1)",
                           patient)
        await conn.execute(
            "INSERT INTO record_feed_outbox (patient_id, identifier, metric, key_version, sealed)"
            " VALUES ($1, $2, 'heart_rate', 1, '\\x00')", patient, f"heart_rate/{tag}")
        # Their link to the medical record and a sign-in in progress (migration 140).
        await conn.execute("INSERT INTO record_links (patient_id, state, key_version,"
                           " tokens_sealed, access_expires_at) VALUES ($1, 'linked', 1,"
                           " '\\x00', now())", patient)
        await conn.execute("INSERT INTO record_link_requests VALUES ($1, $2, 1, '\\x00',"
                           " now())", os.urandom(32), patient)
        await conn.execute("INSERT INTO export_jobs VALUES ($1, $2, now(), now())",
                           uuid.uuid4(), patient)
        await conn.execute(
            "INSERT INTO clinicians (id, rpps, profession, display_name, oidc_subject)"
            " VALUES ($1, $2, 'doctor', 'Dr', $3)", clinician, tag.rjust(11, "1")[:11], tag)
        await conn.execute(
            "INSERT INTO consents (id, patient_id, clinician_id, metrics, data_from, data_to,"
            " expires_at) VALUES ($1, $2, $3, '{heart_rate}', now() - interval '1 day', now(),"
            " now() + interval '1 day')", uuid.uuid4(), patient, clinician)
    await core.audit.record(actor=f"patient:{patient}", patient_id=patient, action="read",
                            resource="heart_rate", outcome="allowed")


async def test_after_erasure_only_the_audit_and_its_record_name_the_patient(core) -> None:  # type: ignore[no-untyped-def]
    erased, _, _ = await new_patient(core, "forgotten")
    kept, _, _ = await new_patient(core, "remaining")
    await _everything_of(core, erased, "a")
    await _everything_of(core, kept, "b")
    async with core.pool.acquire() as conn:
        before = await _rows_of(conn, erased)
    # The seeding must reach every table that can name a patient, or this test proves
    # nothing about it: a new table with a patient_id column needs a row above, and a line
    # in erase_patient (or a cascade).
    unseeded = [t for t, n in before.items()
                if n == 0 and t not in ("erasures", "audit_log_unchained")]
    assert not unseeded, f"seed a row of the patient in {unseeded}"
    assert before["rollups"] >= 2  # an hourly and a daily one
    await erase_patient(core.pool, core.keyring, erased, "test")
    async with core.pool.acquire() as conn:
        after = await _rows_of(conn, erased)
        assert {t: n for t, n in after.items() if n and t not in KEPT_AFTER_ERASURE} == {}
        assert after["erasures"] == 1 and after["audit_log"] == before["audit_log"]
        assert await conn.fetchval("SELECT count(*) FROM refresh_tokens") == 1  # the other's
        detail = await conn.fetchval("SELECT detail FROM erasures WHERE patient_id = $1",
                                     erased)
        assert f"{before['rollups']} rollups" in detail
        assert await _rows_of(conn, kept) == {**before, "erasures": 0}  # nothing of theirs


async def test_a_redelivered_message_quarantines_its_refused_samples_once(core) -> None:  # type: ignore[no-untyped-def]
    """An ack lost after the commit brings the message back: its samples are skipped, and
    the record of its refused samples must not be written a second time either."""
    patient, _, _ = await new_patient(core, "redelivered")
    now = dt.datetime.now(dt.UTC)
    message = MessageIn("watch-redeliver", 7, now, [SegmentIn(patient, "heart_rate", Samples(
        np.array([_ms(now)]), np.array([70.0]), np.zeros(1, np.uint8)))], 1)
    refused = QuarantineIn("watch-redeliver", "devices/watch-redeliver/telemetry", now,
                           "rejected_samples", "1 of 2", b"[]", seq=7)
    other = QuarantineIn("watch-redeliver", "t", now, "malformed", "not JSON", b"{")
    assert await core.store.ingest([message], [refused, other]) == 1
    assert await core.store.ingest([message], [refused]) == 0
    reasons = [r["reason"] for r in await core.pool.fetch(
        "SELECT reason FROM quarantine ORDER BY id")]
    assert reasons == ["rejected_samples", "malformed"]
