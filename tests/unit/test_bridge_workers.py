"""The bridge's worker supervisor, on stand-in worker processes: a killed worker is started
again under its index; a worker that keeps dying stops them all with a failure; a stop ends
every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable

from healthiot.workers import (
    GIVE_UP_AFTER,
    Supervisor,
    worker_client_id,
    worker_health_port,
)

SLEEPER = [sys.executable, "-c", "import sys, time; time.sleep(120)"]
FAILING = [sys.executable, "-c", "import sys; sys.exit(3)"]


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polling another process's state)
            await asyncio.sleep(0.05)


async def test_a_killed_worker_is_started_again_and_a_stop_ends_all() -> None:
    supervisor = Supervisor(2, SLEEPER, restart_min_s=0.05)
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: None not in supervisor.pids())
    first, second = supervisor.pids()
    assert first is not None and second is not None
    os.kill(first, signal.SIGKILL)
    await _until(lambda: supervisor.pids()[0] not in (None, first))
    assert supervisor.pids()[1] == second and supervisor.restarts == 1
    pids = supervisor.pids()
    supervisor.stopping.set()
    assert await asyncio.wait_for(running, 40) == 0
    for pid in pids:
        assert pid is not None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} still running")


async def test_a_worker_that_keeps_dying_stops_every_worker_with_a_failure() -> None:
    supervisor = Supervisor(1, FAILING, restart_min_s=0.01)
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    assert supervisor.gave_up and supervisor.restarts == GIVE_UP_AFTER - 1


def test_worker_zero_keeps_the_configured_id_and_port() -> None:
    assert [worker_client_id("svc-bridge-h", i) for i in range(3)] == [
        "svc-bridge-h", "svc-bridge-h-w1", "svc-bridge-h-w2"]
    assert [worker_health_port(9108, i) for i in range(2)] == [9108, 9109]
    assert worker_health_port(0, 1) == 0
