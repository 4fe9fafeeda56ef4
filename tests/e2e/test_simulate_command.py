"""`healthiot simulate`, as a user runs it: a subprocess with its own var/, the whole stack,
a small fleet, and a report that matches the database."""

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]  # this checkout, imported first by the child
TOTALS = re.compile(r"^simulate: devices=(\d+) messages=(\d+) samples=(\d+) stored=(\d+) "
                    r"rejected=(\d+) refused=(\d+) resent=(\d+) renewed=(\d+) buffered=(\d+) "
                    r"lost=(\d+) dup=(\d+)$", re.M)
ROW = re.compile(r"^[a-z]+-[0-9a-f]{12} +([a-z_]+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) "
                 r"+(\d+) +(\d+)$", re.M)


def _simulate(env, *args):
    done = subprocess.run([sys.executable, "-m", "healthiot.cli", "simulate", *args],
                          env=env, text=True, capture_output=True, timeout=240, cwd=ROOT)
    match = TOTALS.search(done.stdout)
    assert match, done.stdout + done.stderr
    return done, dict(zip(("devices", "messages", "samples", "stored", "rejected", "refused",
                           "resent", "renewed", "buffered", "lost", "dup"),
                          map(int, match.groups()), strict=True))


def _no_server_left(var: Path):
    assert not (var / "pg" / "data" / "postmaster.pid").exists(), "PostgreSQL left running"
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(var) not in out, f"a process still uses {var}:\n{out}"


def test_a_lossy_broker_is_repaired_by_resends_and_the_report_matches_the_database(sim_env):
    var, env = sim_env
    done, totals = _simulate(env, "--devices", "6", "--duration", "12",
                             "--scenario", "lossy-broker")
    assert done.returncode == 0, done.stdout + done.stderr
    assert totals["devices"] == 6 and totals["messages"] > 6
    assert totals["resent"] >= 2  # the one lossy device asked for both its lost messages
    assert totals["renewed"] == 0  # year-long certificates: no renewal due in a short run
    assert (totals["lost"], totals["dup"], totals["buffered"]) == (0, 0, 0)
    assert totals["stored"] + totals["rejected"] == totals["samples"]
    rows = ROW.findall(done.stdout)
    assert len(rows) == 6  # a line per device: sent acked refused resent buffered stored...
    assert sum(int(r[2]) for r in rows) == totals["messages"]  # the acked column
    assert {r[0] for r in rows} == {"watch", "scale", "bp_cuff"}  # the fleet's mix
    assert "devices online" in done.stdout  # the progress line
    assert "compared by counts only" not in done.stdout  # every device sample by sample
    _no_server_left(var)


def test_a_second_run_reuses_the_fleet_and_offline_devices_replay_their_buffer(sim_env):
    var, env = sim_env
    first, totals = _simulate(env, "--devices", "3", "--duration", "6")
    assert first.returncode == 0 and totals["lost"] == 0, first.stdout + first.stderr
    fleet = (var / "simulate" / "fleet.json").read_text()
    second, totals = _simulate(env, "--devices", "3", "--duration", "14",
                               "--scenario", "offline")
    assert second.returncode == 0, second.stdout + second.stderr
    assert (var / "simulate" / "fleet.json").read_text() == fleet  # same devices
    assert "0.0 s" in second.stdout or "enrolled" in second.stdout
    assert (totals["lost"], totals["dup"], totals["buffered"]) == (0, 0, 0)
    assert totals["messages"] > 0
    _no_server_left(var)


def test_a_broker_killed_halfway_loses_nothing_and_the_fleet_is_back_within_a_minute(
        sim_env):
    var, env = sim_env
    done, totals = _simulate(env, "--devices", "8", "--duration", "14",
                             "--scenario", "broker-restart")
    assert done.returncode == 0, done.stdout + done.stderr
    back = re.search(r"^devices back online: (\d+)/(\d+) in ([\d.]+) s", done.stdout, re.M)
    assert back, done.stdout
    assert back.group(1) == back.group(2) == "8" and float(back.group(3)) < 60
    assert (totals["lost"], totals["dup"], totals["buffered"]) == (0, 0, 0)
    assert totals["stored"] + totals["rejected"] == totals["samples"] > 0
    _no_server_left(var)


async def test_simulate_uses_the_database_of_HEALTHIOT_DATABASE_URL(sim_env, database):
    var, env = sim_env
    env.update(HEALTHIOT_DATABASE_URL=database.dsn,
               HEALTHIOT_DATABASE_PASSWORD=database.password)
    done, totals = await asyncio.to_thread(_simulate, env, "--devices", "3", "--duration", "10")
    assert done.returncode == 0 and totals["lost"] == 0, done.stdout + done.stderr
    assert not (var / "pg").exists(), "a cluster of its own was started"
    conn = await asyncpg.connect(database.dsn, password=database.password)
    try:
        assert await conn.fetchval("SELECT sum(samples) FROM ingested_messages") == (
            totals["stored"] + totals["rejected"]) > 0
    finally:
        await conn.close()
    _no_server_left(var)
