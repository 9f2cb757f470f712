"""The key cache: calls that miss on one key at the same time share one lookup.

Issue #19: when a key's entry expired, every call in flight looked it up at once; on
SQLite each of those took a pooled connection, and the ones past the pool's size were
opened and closed each time, a thread and a page cache apiece, which grew the
process's RSS over a long run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.errors import AuthenticationFailed
from spendgate.proxy.auth import KeyCache
from spendgate.security.credentials import hash_secret
from spendgate.store.database import create_engine
from spendgate.store.directory import Directory, KeyRecord

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
SECRET = "sk-sg-" + "k" * 43
IN_FLIGHT = 16


def record(key_id: str = "key_1", revoked: bool = False) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        org_id="org_1",
        team_id=None,
        user_id=None,
        agent_id=None,
        name="k",
        tags=(),
        models=(),
        allow_request_tags=False,
        expires_at=None,
        revoked_at=NOW if revoked else None,
    )


class GatedLookup:
    """A lookup that answers ``answers`` in turn, each only once ``open`` is set."""

    def __init__(self, *answers: KeyRecord | Exception | None) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self.open = asyncio.Event()

    async def __call__(self, digest: str) -> KeyRecord | None:
        self.asked.append(digest)
        answer = self.answers.pop(0)
        await self.open.wait()
        if isinstance(answer, Exception):
            raise answer
        return answer


async def started(*coros: Any) -> list[asyncio.Task[Any]]:
    """``coros`` as tasks, run until each waits."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0)
    return tasks


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def test_concurrent_misses_are_one_query_on_one_connection(engine: AsyncEngine) -> None:
    """16 calls authenticating one key at once, on a cold cache (as when its entry
    expires under load): one SELECT, on one connection, and all 16 get the key; on
    SQLite no connection is opened past the pool's own."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    created = await directory.create_key({"name": "k", "org_id": org["id"]}, NOW)
    await engine.dispose()  # start from an empty pool
    statements: list[str] = []
    checked_out = {"now": 0, "most": 0}

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    def checkout(*_args: Any) -> None:
        checked_out["now"] += 1
        checked_out["most"] = max(checked_out["most"], checked_out["now"])

    def checkin(*_args: Any) -> None:
        checked_out["now"] -= 1

    event.listen(engine.sync_engine, "before_cursor_execute", statement)
    event.listen(engine.sync_engine.pool, "checkout", checkout)
    event.listen(engine.sync_engine.pool, "checkin", checkin)
    cache = KeyCache(directory.key_by_hash, ttl=10.0)
    found = await asyncio.gather(
        *(cache.authenticate(created["key"], NOW, 0.0) for _ in range(IN_FLIGHT))
    )
    assert {r.id for r in found} == {created["id"]}
    assert len(statements) == 1 and "virtual_keys" in statements[0]
    assert checked_out["most"] == 1
    # and once it expires, the next burst of calls is again one query
    await asyncio.gather(*(cache.authenticate(created["key"], NOW, 11.0) for _ in range(IN_FLIGHT)))
    assert len(statements) == 2


async def test_a_newer_policy_generation_does_not_take_an_older_lookup() -> None:
    """A call that already sees a newer generation (a revocation on another replica)
    looks the key up itself instead of waiting for the lookup that began before."""
    generation = {"now": 1}
    lookup = GatedLookup(record(), record(revoked=True))
    cache = KeyCache(lookup, ttl=10.0, generation=lambda: generation["now"])
    before = await started(*(cache.authenticate(SECRET, NOW, 0.0) for _ in range(3)))
    generation["now"] = 2
    after = await started(cache.authenticate(SECRET, NOW, 0.0))
    lookup.open.set()
    assert [t.id for t in await asyncio.gather(*before)] == ["key_1"] * 3
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await after[0]
    assert len(lookup.asked) == 2


async def test_one_caller_cancelled_leaves_the_shared_lookup_to_the_others() -> None:
    """A client that goes away cancels its own wait, not the lookup the others share."""
    lookup = GatedLookup(record())
    cache = KeyCache(lookup, ttl=10.0)
    tasks = await started(*(cache.authenticate(SECRET, NOW, 0.0) for _ in range(3)))
    tasks[0].cancel()
    await asyncio.sleep(0)
    lookup.open.set()
    assert [r.id for r in await asyncio.gather(*tasks[1:])] == ["key_1", "key_1"]
    assert tasks[0].cancelled() and len(lookup.asked) == 1


async def test_a_failed_shared_lookup_fails_every_caller_without_a_cached_key() -> None:
    """The database down on a cold cache: every caller waiting on the lookup gets its
    error; the next call looks the key up again."""
    lookup = GatedLookup(OSError("database down"), record())
    cache = KeyCache(lookup, ttl=10.0)
    tasks = await started(*(cache.authenticate(SECRET, NOW, 0.0) for _ in range(3)))
    lookup.open.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)
    assert (await cache.authenticate(SECRET, NOW, 0.0)).id == "key_1"
    assert len(lookup.asked) == 2


async def test_forget_makes_later_callers_look_again() -> None:
    """A key revoked on this replica while a lookup for it is under way: callers after
    ``forget`` do not wait for that lookup, which may have read the key before."""
    lookup = GatedLookup(record(), record(revoked=True))
    cache = KeyCache(lookup, ttl=10.0)
    before = await started(cache.authenticate(SECRET, NOW, 0.0))
    cache.forget(hash_secret(SECRET))
    after = await started(cache.authenticate(SECRET, NOW, 0.0))
    lookup.open.set()
    assert (await before[0]).id == "key_1"
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await after[0]
    assert len(lookup.asked) == 2
