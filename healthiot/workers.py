"""``healthiot bridge --workers N``: N bridge worker processes on the shared subscription
under one supervisor, which starts a dead worker again or, when workers keep dying, stops
them all and exits non-zero (for the service manager above it to decide).

One Python process runs the bridge on one core (its decoding, normalising and sealing hold
the GIL), so more throughput is more processes: MQTT v5 shared subscriptions spread the
devices' messages over them (ARCHITECTURE.md, decision 9). Each worker keeps a client id of
its own, the same across restarts (``worker_client_id``), so a restarted worker resumes its
persistent session and gets back what it had not acked. A device's messages then reach
several workers: gap detection already asks the database before it requests a resend
(broker_bridge/gaps.py), so one worker's missing numbers stored by another are no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0  # a worker that cannot start must not spin
GIVE_UP_AFTER = 5  # exits within GIVE_UP_WINDOW_S: the fault is not the worker's own
GIVE_UP_WINDOW_S = 60.0
STOP_TIMEOUT_S = 30.0  # a worker drains, acks and disconnects on SIGTERM; then SIGKILL


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def worker_client_id(base: str, index: int) -> str:
    """Worker 0 keeps the configured id (a single bridge's session carries on); the others
    add their index."""
    return base if index == 0 else f"{base}-w{index}"


def worker_health_port(base: int, index: int) -> int:
    """Each worker's probes on a port of its own: the configured one plus its index (0: off)."""
    return base + index if base else 0


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=GIVE_UP_AFTER))
    restarts: int = 0


class Supervisor:
    """Runs ``command + ["--worker", i]`` for i in 0..n-1 and keeps them running."""

    def __init__(self, n: int, command: Sequence[str] | None = None, *,
                 restart_min_s: float = RESTART_MIN_S, first_index: int = 0,
                 env: Mapping[str, str] | None = None) -> None:
        """``first_index``: the index of the first worker (1 when worker 0 runs in the
        caller's own process, as in ``healthiot run``); ``env``: the workers' environment
        (default: this process's)."""
        if n < 1:
            raise ValueError("at least one worker")
        self.restart_min_s = restart_min_s
        self.command = list(command or [sys.executable, "-m", "healthiot.cli", "bridge"])
        self.env = None if env is None else dict(env)
        self.workers = [_Worker(i) for i in range(first_index, first_index + n)]
        self.stopping = asyncio.Event()
        self.gave_up = False

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    def pids(self) -> list[int | None]:
        return [w.process.pid if w.process and w.process.returncode is None else None
                for w in self.workers]

    async def run(self) -> int:
        """Until ``stopping`` is set (0) or a worker keeps dying (1)."""
        tasks = [asyncio.create_task(self._keep(w), name=f"worker-{w.index}")
                 for w in self.workers]
        try:
            await self.stopping.wait()
        finally:
            await asyncio.gather(*(self._stop(w) for w in self.workers))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return 1 if self.gave_up else 0

    async def _keep(self, worker: _Worker) -> None:
        delay = self.restart_min_s
        while not self.stopping.is_set():
            started = time.monotonic()
            worker.process = await asyncio.create_subprocess_exec(
                *self.command, "--worker", str(worker.index), env=self.env)
            log.info("bridge worker started", extra={"worker": worker.index,
                                                      "pid": worker.process.pid})
            code = await worker.process.wait()
            if self.stopping.is_set():
                return
            now = time.monotonic()
            worker.exits.append(now)
            log.error("bridge worker exited; starting it again", extra={
                "worker": worker.index, "returncode": code})
            if (len(worker.exits) == GIVE_UP_AFTER
                    and now - worker.exits[0] < GIVE_UP_WINDOW_S):
                log.error("bridge worker keeps exiting; stopping every worker",
                          extra={"worker": worker.index, "exits": GIVE_UP_AFTER})
                self.gave_up = True
                self.stopping.set()
                return
            if now - started > GIVE_UP_WINDOW_S:
                delay = self.restart_min_s  # it had run well: not a crash loop
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)
            worker.restarts += 1

    async def _stop(self, worker: _Worker) -> None:
        process = worker.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def supervise(n: int) -> int:
    """The ``healthiot bridge --workers n`` process: until SIGTERM or SIGINT."""
    supervisor = Supervisor(n)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stopping.set)
    return await supervisor.run()
