"""``SharedRead``: callers that arrive during a read share the next one, never the one
already in flight (which may predate what they must see)."""

from __future__ import annotations

import asyncio

import pytest

from spendgate.guard.shared_read import SharedRead


class Source:
    """A value that changes; each read returns the value at the moment the read starts
    and finishes only when the test lets it."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.release = asyncio.Event()
        self.began = asyncio.Event()

    async def read(self) -> int:
        seen = self.value
        self.reads += 1
        self.began.set()
        await self.release.wait()
        self.release.clear()
        return seen


async def test_callers_during_a_read_share_the_next_one() -> None:
    """The first caller's read is in flight when the value changes and five more callers
    arrive: they all get one later read, which sees the change (two reads for six
    callers); once idle, a caller reads on its own again."""
    source = Source()
    shared = SharedRead(source.read)
    first = asyncio.ensure_future(shared())
    await source.began.wait()
    source.value = 7  # a change committed after the first read started
    later = [asyncio.ensure_future(shared()) for _ in range(5)]
    await asyncio.sleep(0)
    source.began.clear()
    source.release.set()
    assert await first == 0
    await asyncio.wait_for(source.began.wait(), 5)  # the second read
    source.release.set()
    assert await asyncio.gather(*later) == [7] * 5
    assert source.reads == 2
    assert await asyncio.wait_for(_one_more(shared, source), 5) == 7  # idle again: inline


async def _one_more(shared: SharedRead[int], source: Source) -> int:
    source.began.clear()
    pending = asyncio.ensure_future(shared())
    await asyncio.wait_for(source.began.wait(), 5)
    source.release.set()
    return await pending


async def test_a_failed_shared_read_fails_each_waiter() -> None:
    """The next read fails: every caller waiting for it gets the error, and the read
    after that works again."""
    calls = 0
    gate = asyncio.Event()

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        if calls == 2:
            raise ConnectionError("gone")
        return calls

    shared = SharedRead(flaky)
    first = asyncio.ensure_future(shared())
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(shared()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 1
    for task in waiting:
        with pytest.raises(ConnectionError):
            await task
    assert await shared() == 3
