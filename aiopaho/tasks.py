"""Stopping a task that may swallow its cancellation.

Python 3.11's ``asyncio.wait_for`` returns the result, dropping the cancellation, when its
future completes at the moment the task is cancelled (gh-86296). Every wait in this package
is a ``wait_for`` on a broker's answer (CONNACK, PUBACK, SUBACK), so a task stopped while an
answer arrives can carry on as if never asked to stop; a bare ``cancel(); await task`` then
waits for ever. ``stop_task`` asks again until the task has really ended.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

STOP_POLL_S = 0.5  # how often a stop is re-requested from a task that ignored one


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended. A failure it ended with is logged, not
    raised: stopping is clean-up, and the caller is already on its way out."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_POLL_S)
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s failed", task.get_name(), exc_info=task.exception())
