"""One read shared by every caller that arrives while another read is in flight.

A call with no budget, wallet or rate limit still has to see a policy change committed
before it arrived, so it reads the counters' generation. Under concurrency most of those
reads can be shared without weakening that: callers that arrive while a read is in
flight wait for the *next* read, which starts after all of them arrived, so whatever it
returns is at least as new as each of them needs. One caller at a time pays one read
each, as before; sixteen in flight pay about one read per round trip between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self._read = read
        self._busy = False
        self._waiting: list[asyncio.Future[T]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self) -> T:
        """The result of a read that started after this call."""
        if self._busy:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            return await future
        self._busy = True
        try:
            return await self._read()
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """The read finished: serve whoever queued meanwhile with a new one."""
        if not self._waiting:
            self._busy = False
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._serve(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, batch: list[asyncio.Future[T]]) -> None:
        try:
            result = await self._read()
        except Exception as exc:  # noqa: BLE001 - each waiter gets it, as its own read would raise
            for future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for future in batch:
                if not future.done():
                    future.set_result(result)
        finally:
            self._hand_over()
