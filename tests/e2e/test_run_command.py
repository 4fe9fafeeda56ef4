"""`healthiot run` (what `make run` starts), as a user runs it: a subprocess with its own var/.

It must start everything itself, print the summary line with nothing lost, work a second
time on the same var/, stop cleanly on Ctrl-C, and leave no server process behind.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from healthiot.localservers import free_port

SUMMARY = re.compile(r"^summary: devices=(\d+) messages=(\d+) samples=(\d+) stored=(\d+) "
                     r"rejected=(\d+) lost=(-?\d+)$", re.M)


@pytest.fixture
def run_env(workdir):
    var = workdir / f"var-{time.monotonic_ns()}"
    env = dict(os.environ, HEALTHIOT_VAR_DIR=str(var), HEALTHIOT_PG_PORT=str(free_port()),
               HEALTHIOT_MQTT_PORT=str(free_port()), HEALTHIOT_API_PORT=str(free_port()),
               HEALTHIOT_MQTT_SERVICES_PORT=str(free_port()),
               HEALTHIOT_BRIDGE_HEALTH_PORT=str(free_port()),
               HEALTHIOT_API_METRICS_PORT=str(free_port()),
               HEALTHIOT_MAINTENANCE_METRICS_PORT=str(free_port()))
    return var, env


def _healthiot(*args):
    return [sys.executable, "-m", "healthiot.cli", *args]


def _no_server_left(var: Path):
    # postmaster.pid is removed by a clean shutdown; a live pid in it means a leftover.
    pid_file = var / "pg" / "data" / "postmaster.pid"
    assert not pid_file.exists(), "PostgreSQL was left running"
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(var) not in out, f"a process still uses {var}:\n{out}"


def test_run_for_a_duration_stores_everything_and_twice_in_a_row(run_env):
    var, env = run_env
    for attempt in (1, 2):
        done = subprocess.run(_healthiot("run", "--duration", "8"), env=env, text=True,
                              capture_output=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        match = SUMMARY.search(done.stdout)
        assert match, done.stdout
        devices, messages, samples, stored, rejected, lost = map(int, match.groups())
        assert devices == 4 and messages > 0 and stored > 0, (attempt, match.group(0))
        assert (stored, rejected, lost) == (samples, 0, 0), (attempt, match.group(0))
        _no_server_left(var)
    assert "password" in done.stdout and "ca.pem" in done.stdout  # how to reach the API


def test_ctrl_c_stops_everything_cleanly(run_env):
    var, env = run_env
    env["HEALTHIOT_BRIDGE_WORKERS"] = "2"
    process = subprocess.Popen(_healthiot("run"), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = []
    deadline = time.monotonic() + 120
    for line in process.stdout:
        output.append(line)
        if line.startswith("devices online") or time.monotonic() > deadline:
            break
    # A worker process beside its own bridge (HEALTHIOT_BRIDGE_WORKERS, here 2).
    children = subprocess.run(["ps", "--ppid", str(process.pid), "-o", "pid=,args="],
                              capture_output=True, text=True).stdout
    workers = [line.split()[0] for line in children.splitlines()
               if "healthiot.cli bridge --worker 1" in line]
    # While it runs, the bridge's probes answer where the README says (curl, as a probe).
    port = env["HEALTHIOT_BRIDGE_HEALTH_PORT"]
    health = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             f"http://127.0.0.1:{port}/healthz"], capture_output=True,
                            text=True, timeout=30)
    metrics = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"],
                             capture_output=True, text=True, timeout=30)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=90)
    text = "".join(output) + rest
    assert process.returncode == 0, text
    assert SUMMARY.search(text), text
    _no_server_left(var)
    assert len(workers) == 1, children
    assert not Path(f"/proc/{workers[0]}").exists(), "the bridge worker was left running"
    assert health.stdout == "200", health
    assert "healthiot_bridge_messages_total " in metrics.stdout, metrics
    assert "healthiot_bridge_worker_failures_total 0.0" in metrics.stdout, metrics


async def test_run_uses_the_database_of_HEALTHIOT_DATABASE_URL(run_env, database):
    """With HEALTHIOT_DATABASE_URL (a compose-like database), no cluster of its own: the
    readings land in that database."""
    var, env = run_env
    env.update(HEALTHIOT_DATABASE_URL=database.dsn,
               HEALTHIOT_DATABASE_PASSWORD=database.password)
    done = await asyncio.to_thread(
        subprocess.run, _healthiot("run", "--duration", "6"), env=env, text=True,
        capture_output=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    match = SUMMARY.search(done.stdout)
    assert match and int(match.group(4)) > 0, done.stdout
    assert not (var / "pg").exists(), "a cluster of its own was started"
    conn = await asyncpg.connect(database.dsn, password=database.password)
    try:
        assert await conn.fetchval("SELECT sum(samples) FROM ingested_messages") == int(
            match.group(4))
    finally:
        await conn.close()
    _no_server_left(var)
