"""stop_task ends a task even when the task swallowed the cancellation (the Python 3.11
``wait_for`` race), where ``cancel(); await task`` would wait for ever."""

from __future__ import annotations

import asyncio
import logging

import pytest

from aiopaho import stop_task


async def _swallows_first_cancellation(stopped: list[str]) -> None:
    """Like a task whose ``wait_for`` got its answer as it was cancelled: it carries on."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        stopped.append("ignored")
    await asyncio.Event().wait()  # only a second cancellation ends it


async def test_a_task_that_swallowed_its_cancellation_is_stopped() -> None:
    stopped: list[str] = []
    task = asyncio.create_task(_swallows_first_cancellation(stopped), name="stubborn")
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), timeout=5)
    assert stopped == ["ignored"]
    assert task.cancelled()


async def test_a_bare_cancel_does_not_stop_such_a_task() -> None:
    """The reason stop_task exists: shows the test above could fail."""
    task = asyncio.create_task(_swallows_first_cancellation([]), name="stubborn")
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done
    await stop_task(task)


async def test_a_task_that_failed_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails(), name="failing")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="aiopaho.tasks"):
        await stop_task(task)
    assert "failing failed" in caplog.text
