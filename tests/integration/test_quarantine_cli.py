"""``healthiot quarantine list | show | purge`` as an operator runs them: every refusal of
one device in the last day, one record's metadata (never its payload), and a purge."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from healthiot.services import Core
from storage.store import QuarantineIn
from tests.conftest import Database
from tests.integration.test_device_cli import healthiot

SECRET = b'[{"n":"heart_rate","u":"furlong","v":61.5}]'


async def _seed(core: Core) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = [QuarantineIn("watch-aaaaaaaaaaaa", "devices/watch-aaaaaaaaaaaa/telemetry",
                         now - dt.timedelta(hours=h), reason, "detail", SECRET)
            for h, reason in ((1, "malformed"), (5, "missing_sequence"), (30, "malformed"))]
    rows.append(QuarantineIn("scale-bbbbbbbbbbbb", "devices/scale-bbbbbbbbbbbb/telemetry",
                             now - dt.timedelta(hours=2), "malformed", "detail", SECRET))
    await core.store.ingest_batch([], rows)


async def test_list_shows_every_refusal_of_one_device_in_the_last_day(
        core: Core, database: Database, tmp_path: Path) -> None:
    await _seed(core)
    done = await healthiot(database, tmp_path, "quarantine", "list", "--device",
                           "watch-aaaaaaaaaaaa", "--hours", "24")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("id\treceived_at\tdevice\treason")
    assert [line.split("\t")[3] for line in lines[1:]] == ["missing_sequence", "malformed"]
    assert all("watch-aaaaaaaaaaaa" in line for line in lines[1:])
    assert "61.5" not in done.stdout


async def test_show_prints_metadata_and_never_the_payload(
        core: Core, database: Database, tmp_path: Path) -> None:
    await _seed(core)
    record = await core.pool.fetchval("SELECT min(id) FROM quarantine")
    done = await healthiot(database, tmp_path, "quarantine", "show", str(record))
    assert done.returncode == 0, done.stderr
    assert "reason: malformed" in done.stdout and "device: watch-aaaaaaaaaaaa" in done.stdout
    assert "61.5" not in done.stdout and "furlong" not in done.stdout
    missing = await healthiot(database, tmp_path, "quarantine", "show", "999999")
    assert missing.returncode == 1 and "no quarantine record 999999" in missing.stderr


async def test_purge_deletes_only_what_is_older(core: Core, database: Database,
                                                tmp_path: Path) -> None:
    await _seed(core)
    done = await healthiot(database, tmp_path, "quarantine", "purge", "--older-than-days", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 quarantine records deleted")
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 3


async def test_negative_durations_and_limits_are_refused(database: Database,
                                                         tmp_path: Path) -> None:
    for args in (("list", "--hours", "-1"), ("list", "--limit", "0"),
                 ("purge", "--older-than-days", "-3"), ("list", "--hours", "nan")):
        done = await healthiot(database, tmp_path, "quarantine", *args)
        assert done.returncode == 2 and "must be" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
