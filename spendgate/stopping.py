"""Ending background loops between rounds, not inside one.

A task cancelled inside a database call on SQLite never ends: SQLAlchemy closes the
aiosqlite connection it was using, and that close waits for a worker thread that has
already stopped (``tests/store/test_store.py`` shows it). So a gateway's loops are asked
to stop (:meth:`Stop.set`): each finishes the round it is in and ends at its next pause.
Only a loop still running after a grace period is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Collection
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger("spendgate")


class Stop:
    """Set once, when the process shuts down; loops pause with :meth:`pause`."""

    def __init__(self) -> None:
        self._asked = asyncio.Event()

    def set(self) -> None:
        self._asked.set()

    def is_set(self) -> bool:
        return self._asked.is_set()

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True to go on, False (at once) once stopping was asked."""
        if seconds > 0 and not self._asked.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._asked.wait()
        else:
            await asyncio.sleep(0)
        return not self._asked.is_set()


async def end_tasks(
    tasks: Collection[asyncio.Task[Any]], grace_seconds: float, *, what: str = "background task"
) -> None:
    """Wait for ``tasks`` (asked to stop) to end: ``grace_seconds`` each for ending by
    themselves, then, cancelled, for ending at all; each one late is logged by name."""
    if not tasks:
        return
    _, running = await asyncio.wait(tasks, timeout=grace_seconds)
    for task in running:
        log.warning("%s %s did not stop in %s s: cancelled", what, task.get_name(), grace_seconds)
        task.cancel()
    if running:
        _, stuck = await asyncio.wait(running, timeout=grace_seconds)
        for task in stuck:
            log.error("%s %s did not end when cancelled", what, task.get_name())


def ignore_interrupts() -> None:
    """A pool process's initializer: Ctrl-C (SIGINT to the whole process group) is for
    its parent, which shuts the pool down (:func:`end_pool`); the pool's processes would
    otherwise die of it mid-job, print its traceback and break the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def end_pool(pool: Executor, grace_seconds: float) -> None:
    """Shut ``pool`` down and wait (``grace_seconds`` at most) for its processes and
    threads to end, so its queues' semaphores are released now.

    Not at exit: a uvicorn worker, once shut down gracefully, raises the signal that
    stopped it again with its default action (``Server.capture_signals``), so a worker
    stopped by SIGTERM dies of it and runs no exit handlers. Semaphores still held then
    are never unlinked; the parent's resource tracker reports them as leaked."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace_seconds):
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
