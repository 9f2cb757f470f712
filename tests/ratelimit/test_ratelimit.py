"""The rate-limit logs on every backend: memory and the machine's real Redis.

Redis must be running (``SPENDGATE_TEST_REDIS``, default 127.0.0.1:6379/0): the tests
fail, never skip, without it. Each test gets its own random key prefix and deletes its
keys afterwards. Time is passed in as plain numbers; nothing sleeps or reads the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from spendgate.ratelimit import Check, CheckResult, Denial, Granted, RateLimiter
from spendgate.ratelimit.factory import rate_limiter_from_url
from spendgate.ratelimit.memory import MemoryRateLimiter
from spendgate.ratelimit.redis import RedisRateLimiter
from tests.conftest import REDIS_URL, redis_keyspace

EXPIRES = 1_000.0  # far beyond every `now` below, unless a test says otherwise
RPM5 = Check("k:requests", "requests", 5, 60.0, 1)


def tokens(amount: int, limit: int = 1_000) -> Check:
    return Check("k:tokens", "tokens", limit, 60.0, amount)


def slot(limit: int = 2) -> Check:
    return Check("k:concurrency", "concurrency", limit, 0, 1)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    """An empty rate limiter on each backend."""
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    async with redis_keyspace() as prefix:
        backend = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        try:
            yield backend
        finally:
            await backend.aclose()


async def granted(
    limiter: RateLimiter, rid: str, checks: list[Check], now: float, expires_at: float = EXPIRES
) -> Granted:
    result = await limiter.acquire(rid, checks, now, expires_at)
    assert isinstance(result, Granted), result
    return result


async def denied(limiter: RateLimiter, rid: str, checks: list[Check], now: float) -> Denial:
    result = await limiter.acquire(rid, checks, now, EXPIRES)
    assert isinstance(result, Denial), result
    return result


async def test_rpm_is_exact_at_the_window_edge(limiter: RateLimiter) -> None:
    """5 rpm: five at t=0..4, the sixth waits until the first leaves at exactly t=60."""
    first = await granted(limiter, "r0", [RPM5], 0.0)
    assert first.results == (CheckResult(5, 4, 60.0),)
    for t in range(1, 5):
        last = await granted(limiter, f"r{t}", [RPM5], float(t))
    assert last.results == (CheckResult(5, 0, 56.0),)  # the t=0 entry leaves in 56 s

    assert await denied(limiter, "x1", [RPM5], 4.0) == Denial(0, RPM5, 5, 56.0)
    late = await denied(limiter, "x2", [RPM5], 59.9)
    assert late.used == 5 and late.retry_after == pytest.approx(0.1)

    on_edge = await granted(limiter, "r60", [RPM5], 60.0)
    assert on_edge.results == (CheckResult(5, 0, 1.0),)  # next to leave: t=1, at t=61
    assert (await denied(limiter, "x3", [RPM5], 60.5)).retry_after == pytest.approx(0.5)


async def test_no_double_burst_across_the_window_edge(limiter: RateLimiter) -> None:
    """Two at t=0.5 and three at t=59: at t=61 only the two from before t=1 have left,
    so two more fit (a fixed minute window would admit five), then the wait is 58 s."""
    for i in range(2):
        await granted(limiter, f"a{i}", [RPM5], 0.5)
    for i in range(3):
        await granted(limiter, f"b{i}", [RPM5], 59.0)
    assert await denied(limiter, "x0", [RPM5], 60.0) == Denial(0, RPM5, 5, 0.5)

    await granted(limiter, "c0", [RPM5], 61.0)
    await granted(limiter, "c1", [RPM5], 61.0)
    assert await denied(limiter, "x1", [RPM5], 61.0) == Denial(0, RPM5, 5, 58.0)


async def test_retry_after_waits_for_enough_entries_to_leave(limiter: RateLimiter) -> None:
    """Tokens 300 at t=0, 10, 20 (limit 1000): a 500-token request at t=30 needs 400
    freed, so it waits for the t=0 and t=10 entries: until t=70, 40 s."""
    for t in (0, 10, 20):
        await granted(limiter, f"r{t}", [tokens(300)], float(t))
    assert await denied(limiter, "x", [tokens(500)], 30.0) == Denial(0, tokens(500), 900, 40.0)
    assert await denied(limiter, "y", [tokens(500)], 69.0) == Denial(0, tokens(500), 600, 1.0)
    result = await granted(limiter, "z", [tokens(500)], 70.0)
    assert result.results == (CheckResult(1_000, 200, 10.0),)


async def test_large_logs_page_and_prune_in_chunks(limiter: RateLimiter) -> None:
    """1,200 entries (more than Redis pages through at once): the wait is found deep in
    the log, and one call prunes them all once they have left."""
    many = Check("k:tokens", "tokens", 1_200, 60.0, 1)
    await asyncio.gather(
        *(limiter.acquire(f"r{i}", [many], i / 100, EXPIRES) for i in range(1_200))
    )
    big = many._replace(amount=150)
    refusal = await denied(limiter, "x", [big], 30.0)
    assert refusal.used == 1_200 and refusal.retry_after == pytest.approx(31.49)
    assert (await denied(limiter, "y", [big], 61.0)).used == 1_099  # t <= 1.0 has left
    result = await granted(limiter, "z", [many._replace(amount=1_200)], 72.0)
    assert result.results == (CheckResult(1_200, 0, 60.0),)


async def test_a_request_larger_than_the_limit_never_fits(limiter: RateLimiter) -> None:
    """An estimate above the tpm limit is refused with no wait, even on an empty bucket."""
    assert await denied(limiter, "x", [tokens(1_001)], 0.0) == Denial(0, tokens(1_001), 0, None)
    await granted(limiter, "r", [tokens(1_000)], 0.0)
    assert await denied(limiter, "y", [tokens(2_000)], 1.0) == Denial(0, tokens(2_000), 1_000, None)


async def test_settle_corrects_tokens_to_actual(limiter: RateLimiter) -> None:
    """An estimate of 800 blocks a 300 request; settled at 150 actual, it fits."""
    await granted(limiter, "r1", [RPM5, tokens(800)], 0.0)
    assert (await denied(limiter, "x", [tokens(300)], 1.0)).used == 800

    await limiter.settle("r1", {"k:tokens": 150}, 2.0)

    result = await granted(limiter, "r2", [RPM5, tokens(300)], 3.0)
    assert result.results == (CheckResult(5, 3, 57.0), CheckResult(1_000, 550, 57.0))


async def test_settle_above_the_estimate_blocks_until_it_leaves(limiter: RateLimiter) -> None:
    """Actual usage above the estimate is recorded too: the bucket stays over its limit
    until that entry leaves its window. Settling twice changes nothing more."""
    await granted(limiter, "r1", [tokens(100)], 0.0)
    await limiter.settle("r1", {"k:tokens": 1_500}, 5.0)
    await limiter.settle("r1", {"k:tokens": 10}, 6.0)
    assert await denied(limiter, "x", [tokens(0)], 10.0) == Denial(0, tokens(0), 1_500, 50.0)
    await granted(limiter, "r2", [tokens(1_000)], 60.0)


async def test_settle_after_the_window_changes_nothing(limiter: RateLimiter) -> None:
    """Entries keep their start time: a call settled after its entry left the window
    does not come back into it."""
    await granted(limiter, "long", [tokens(900)], 0.0)
    await granted(limiter, "next", [tokens(900)], 60.0)
    await limiter.settle("long", {"k:tokens": 5_000}, 90.0)
    assert (await denied(limiter, "x", [tokens(200)], 100.0)).used == 900


async def test_settle_keeps_requests_and_release_removes_everything(limiter: RateLimiter) -> None:
    """A forwarded call (settled) still counts as a request; one never forwarded
    (released) leaves no trace in any bucket. Both are idempotent."""
    checks = [RPM5, tokens(200), slot(1)]
    for i in range(2):
        await granted(limiter, f"s{i}", checks, float(i))
        await limiter.settle(f"s{i}", {"k:tokens": 100}, float(i))
    for i in range(3):
        await granted(limiter, f"r{i}", checks, 10.0 + i)
        await limiter.release(f"r{i}", 10.0 + i)
        await limiter.release(f"r{i}", 10.0 + i)
    await limiter.release("never-acquired", 20.0)
    await limiter.settle("never-acquired", {"k:tokens": 1}, 20.0)

    result = await granted(limiter, "last", checks, 30.0)
    assert result.results == (
        CheckResult(5, 2, 30.0),  # s0, s1 and this one
        CheckResult(1_000, 600, 30.0),
        CheckResult(1, 0, 0.0),
    )


async def test_release_of_an_older_entry_leaves_the_rest(limiter: RateLimiter) -> None:
    """A release finds its entries anywhere in the window (memory pops the newest in O(1)
    and searches otherwise): what is left, and the oldest entry, are as if it never came."""
    for i, rid in enumerate(("a", "b", "c")):
        await granted(limiter, rid, [RPM5, tokens(100)], float(i))
    await limiter.release("b", 3.0)
    await limiter.release("a", 3.0)
    result = await granted(limiter, "d", [RPM5, tokens(100)], 4.0)
    assert result.results == (CheckResult(5, 3, 58.0), CheckResult(1_000, 800, 58.0))
    await limiter.release("d", 5.0)
    result = await granted(limiter, "e", [RPM5, tokens(100)], 5.0)
    assert result.results == (CheckResult(5, 3, 57.0), CheckResult(1_000, 800, 57.0))


async def test_concurrency_cap_freed_by_settle_release_and_reap(limiter: RateLimiter) -> None:
    """Two slots: a third call waits for a settle, a release, or an expired reservation."""
    await granted(limiter, "a", [slot()], 0.0, expires_at=100.0)
    await granted(limiter, "b", [slot()], 0.0, expires_at=200.0)
    assert await denied(limiter, "x", [slot()], 1.0) == Denial(0, slot(), 2, None)

    await limiter.settle("a", {}, 2.0)
    await granted(limiter, "c", [slot()], 3.0, expires_at=300.0)
    assert (await denied(limiter, "y", [slot()], 4.0)).used == 2
    await limiter.release("c", 5.0)
    await granted(limiter, "d", [slot()], 6.0, expires_at=150.0)

    assert await limiter.reap(150.0) == 0  # strictly before: d expires at 150, not yet
    assert (await denied(limiter, "z", [slot()], 150.0)).used == 2
    assert await limiter.reap(150.5) == 1  # d
    assert await limiter.reap(150.5) == 0
    await granted(limiter, "e", [slot()], 151.0, expires_at=400.0)
    assert await limiter.reap(1_000.0) == 2  # b and e


async def test_expired_slots_stop_counting_before_any_reap(limiter: RateLimiter) -> None:
    """A crashed call's slot frees itself once its expires_at has passed."""
    await granted(limiter, "crashed", [slot(1)], 0.0, expires_at=30.0)
    assert (await denied(limiter, "x", [slot(1)], 30.0)).used == 1
    result = await granted(limiter, "fresh", [slot(1)], 30.5, expires_at=90.0)
    assert result.results == (CheckResult(1, 0, 0.0),)
    assert await limiter.reap(1_000.0) == 2


async def test_spend_velocity_breaks_a_runaway_loop(limiter: RateLimiter) -> None:
    """$5 per 600 s: a loop of calls each reserving $1 worst case and costing $0.90
    is stopped at the sixth call, until the first call's spend is 600 s old."""
    dollar = 1_000_000_000
    spend = Check("k:spend", "spend", 5 * dollar, 600.0, dollar)
    for i in range(5):
        await granted(limiter, f"loop{i}", [spend], 10.0 * i)
        await limiter.settle(f"loop{i}", {"k:spend": 9 * dollar // 10}, 10.0 * i + 5)
    # 4.5 spent; another worst-case dollar would make 5.5
    refusal = await denied(limiter, "loop5", [spend], 50.0)
    assert refusal == Denial(0, spend, 45 * dollar // 10, 550.0)
    assert (await denied(limiter, "loop5", [spend], 599.0)).retry_after == pytest.approx(1.0)
    await granted(limiter, "loop5", [spend], 600.0)


@pytest.mark.parametrize("limit", [20_000_000 * 10**9, 2**53, 2**53 + 1, 10**18])
async def test_a_spend_limit_above_2_to_the_53_is_exact_to_the_nano(
    limiter: RateLimiter, limit: int
) -> None:
    """A spend window of $20,000,000 (or 2**53 nanos and one above, or the API's largest,
    $1e9) filled by a worst case of the whole limit settled one nano lower: one more nano
    fits, two do not (and would fit once that call leaves the window); usage, remaining
    and a later window are exact to the nano, on both backends."""

    def spend(amount: int) -> Check:
        return Check("k:spend", "spend", limit, 600.0, amount)

    await granted(limiter, "r1", [spend(limit)], 0.0)
    await limiter.settle("r1", {"k:spend": limit - 1}, 1.0)
    assert await limiter.usage([spend(0)], 2.0) == [limit - 1]
    assert await denied(limiter, "r2", [spend(2)], 2.0) == Denial(0, spend(2), limit - 1, 598.0)
    last = await granted(limiter, "r3", [spend(1)], 3.0)
    assert last.results == (CheckResult(limit, 0, 597.0),)
    assert await limiter.usage([spend(0)], 4.0) == [limit]
    await limiter.release("r3", 5.0)
    assert await limiter.usage([spend(0)], 5.0) == [limit - 1]
    # r1 has left at t=600: the whole limit fits again, and not a nano more
    assert (await denied(limiter, "r4", [spend(limit + 1)], 600.0)).used == 0
    await granted(limiter, "r5", [spend(limit)], 600.0)


async def test_all_checks_or_none(limiter: RateLimiter) -> None:
    """When the tokens check passes but the rpm check fails, nothing is recorded."""
    rpm1 = Check("k:requests", "requests", 1, 60.0, 1)
    await granted(limiter, "r1", [rpm1], 0.0)
    checks = [tokens(600), slot(1), rpm1]
    for i in range(5):
        assert (await denied(limiter, f"x{i}", checks, 1.0)).index == 2
    result = await granted(limiter, "r2", [tokens(1_000), slot(1)], 2.0)
    assert result.results == (CheckResult(1_000, 0, 60.0), CheckResult(1, 0, 0.0))


async def test_concurrent_acquires_grant_exactly_the_limit(limiter: RateLimiter) -> None:
    """200 simultaneous acquires against 50 rpm (with tokens and a slot cap beside it):
    exactly 50 get through; on Redis they interleave over a pool of connections."""
    rpm50 = Check("k:requests", "requests", 50, 60.0, 1)
    checks = [rpm50, tokens(10, limit=100_000), slot(1_000)]
    results = await asyncio.gather(
        *(limiter.acquire(f"r{i}", checks, 1.0, EXPIRES) for i in range(200))
    )
    assert sum(isinstance(r, Granted) for r in results) == 50
    assert all(r.index == 0 and r.used == 50 for r in results if isinstance(r, Denial))
    remaining = sorted(r.results[0].remaining for r in results if isinstance(r, Granted))
    assert remaining == list(range(50))
    assert await limiter.reap(EXPIRES + 1) == 50


async def test_two_redis_clients_share_the_limit() -> None:
    """Two independent clients (as two replicas would be) share one bucket."""
    async with redis_keyspace() as prefix:
        first = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        second = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        try:
            rpm = Check("k:requests", "requests", 100, 60.0, 1)
            results = await asyncio.gather(
                *(
                    (first if i % 2 else second).acquire(f"r{i}", [rpm], 0.0, EXPIRES)
                    for i in range(300)
                )
            )
            assert sum(isinstance(r, Granted) for r in results) == 100
            assert {i % 2 for i, r in enumerate(results) if isinstance(r, Granted)} == {0, 1}
        finally:
            await first.aclose()
            await second.aclose()


async def test_idle_buckets_do_not_accumulate() -> None:
    """Memory drops a bucket once its entries have left; Redis keys carry a TTL of
    their window (slots: of their expiry), and released buckets are deleted at once."""
    memory = MemoryRateLimiter()
    for i in range(100):
        await granted(memory, f"r{i}", [Check(f"b{i}:requests", "requests", 5, 60.0, 1)], 0.0)
    await granted(memory, "s", [slot()], 0.0, expires_at=30.0)
    assert memory.bucket_count() == 101
    assert await memory.reap(60.0) == 1
    assert memory.bucket_count() == 0

    async with redis_keyspace() as prefix:
        backend = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        admin = Redis.from_url(REDIS_URL)
        try:
            await granted(backend, "r", [RPM5, tokens(10), slot()], 0.0, expires_at=30.0)
            assert 0 < await admin.ttl(f"{prefix}rl:k:requests:z") <= 61
            assert 0 < await admin.ttl(f"{prefix}rl:k:tokens:a") <= 61
            assert 0 < await admin.ttl(f"{prefix}rl:k:concurrency:z") <= 31
            assert 0 < await admin.ttl(f"{prefix}rl:r:r") <= 90
            await backend.release("r", 1.0)
            assert [key async for key in admin.scan_iter(match=f"{prefix}*")] == []
        finally:
            await admin.aclose()
            await backend.aclose()


async def test_a_busy_window_stays_compact_and_exact() -> None:
    """A bucket that sees a call every 8 ms for eight minutes keeps at most 4/3 of a
    window of entries (the ones that left are cut off the front once they are a quarter
    of the arrays), 8 bytes each, and its count stays exact: the limit is reached at
    exactly 7,500 calls in any 60 s, and the call 60 s after the oldest one fits."""
    memory = MemoryRateLimiter()
    check = Check("busy:requests", "requests", 7_500, 60.0, 1)
    calls = 60_000
    for i in range(calls):
        now = i * 0.008
        await granted(memory, f"r{i}", [check], now)
        await memory.settle(f"r{i}", {"busy:requests": 1}, now)
    window = memory._windows["busy:requests"]
    assert len(window) == 7_500
    assert len(window.gaps) <= 7_500 * 4 // 3
    assert window.gaps.itemsize == window.amounts.itemsize == 4
    over = await memory.acquire("over", [check], (calls - 1) * 0.008, EXPIRES)
    assert isinstance(over, Denial) and over.used == 7_500
    assert over.retry_after == pytest.approx(0.008)
    assert isinstance(await memory.acquire("next", [check], calls * 0.008, EXPIRES), Granted)


async def test_long_windows_count_hours_apart_and_past_2_to_the_32(limiter: RateLimiter) -> None:
    """A day-long spend window whose calls are over 71 minutes apart (2**32 µs) and cost
    more than 2**32 nanos each still counts every call exactly, to the microsecond."""
    spend = Check("k:spend", "spend", 20 * 10**9, 86_400.0, 6 * 10**9)
    day = 200_000.0
    for rid, now in (("a", 0.0), ("b", 5_000.0), ("c", 10_000.000_001)):
        await granted(limiter, rid, [spend], now, expires_at=day)
    more = spend._replace(amount=3 * 10**9)
    assert await denied(limiter, "x", [more], 20_000.0) == Denial(0, more, 18 * 10**9, 66_400.0)
    fill = spend._replace(amount=8 * 10**9)  # "a" has left at 86,400.0: exactly the limit
    result = await limiter.acquire("d", [fill], 86_400.0, day)
    assert result == Granted((CheckResult(20 * 10**9, 0, 5_000.0),))
    assert await limiter.usage([spend], 96_400.0) == [14 * 10**9]  # "c" and "d"
    late = await denied(limiter, "y", [spend._replace(amount=7 * 10**9)], 96_400.0)
    assert late.used == 14 * 10**9 and late.retry_after == pytest.approx(1e-6, rel=1e-3)
    await limiter.settle("d", {"k:spend": 5 * 10**9}, 96_400.0)
    assert await limiter.usage([spend], 96_400.0) == [11 * 10**9]
    await limiter.settle("c", {"k:spend": 2 * 10**10}, 96_400.0)  # in place, widened
    assert await limiter.usage([spend], 96_400.0) == [25 * 10**9]
    assert await limiter.usage([spend], 96_400.000_01) == [5 * 10**9]  # "c" has left


async def test_a_clock_stepping_back_keeps_the_log_in_order() -> None:
    """In memory, a call stamped before the newest entry is stamped at the newest one:
    the log stays sorted, so it leaves with it and not before."""
    memory = MemoryRateLimiter()
    await granted(memory, "a", [RPM5], 10.0)
    await granted(memory, "b", [RPM5], 5.0)
    assert await memory.usage([RPM5], 69.999_999) == [2]
    assert await memory.usage([RPM5], 70.0) == [0]
    result = await granted(memory, "c", [RPM5], 69.5)
    assert result.results == (CheckResult(5, 2, 0.5),)


@pytest.mark.parametrize(
    ("rid", "checks"),
    [
        ("", [RPM5]),
        ("#total", [RPM5]),
        ("r", [RPM5, RPM5]),
        ("r", [Check("k:concurrency", "concurrency", 2, 0, 2)]),
        ("r", [Check("k:tokens", "tokens", 10, 0.0, 1)]),
        ("r", [Check("k:tokens", "tokens", 10, 60.0, -1)]),
    ],
)
async def test_malformed_acquires_are_refused(
    limiter: RateLimiter, rid: str, checks: list[Check]
) -> None:
    """Both backends refuse what they cannot represent, before touching anything."""
    with pytest.raises(ValueError):
        await limiter.acquire(rid, checks, 0.0, EXPIRES)


async def test_no_checks_is_granted(limiter: RateLimiter) -> None:
    """A call governed by rows without limits acquires nothing and settles cleanly."""
    assert await limiter.acquire("r", [], 0.0, EXPIRES) == Granted(())
    await limiter.settle("r", {}, 1.0)
    assert await limiter.reap(EXPIRES + 1) == 0


async def test_backend_is_chosen_by_url() -> None:
    """No URL or memory:// gives memory, redis:// gives Redis, anything else fails."""
    assert isinstance(rate_limiter_from_url(None), MemoryRateLimiter)
    assert isinstance(rate_limiter_from_url("memory://"), MemoryRateLimiter)
    backend = rate_limiter_from_url(REDIS_URL, prefix="sgtest:factory:")
    try:
        assert isinstance(backend, RedisRateLimiter) and backend.prefix == "sgtest:factory:"
        assert await backend.reap(0.0) == 0
    finally:
        await backend.aclose()
    with pytest.raises(ValueError, match="unsupported rate-limit URL"):
        rate_limiter_from_url("postgresql://localhost/x")


async def test_usage_reads_what_acquire_counts_and_changes_nothing(
    limiter: RateLimiter,
) -> None:
    """Window buckets: the entries still in the window (settled to actual); concurrency:
    live slots (an expired one no longer counts); reading twice records nothing."""
    await granted(limiter, "a", [RPM5, tokens(100), slot()], 10.0, expires_at=50.0)
    await granted(limiter, "b", [RPM5, tokens(30), slot()], 20.0)
    await limiter.settle("a", {"k:tokens": 40}, 21.0)
    assert await limiter.usage([RPM5, tokens(0), slot()], 30.0) == [2, 70, 1]
    assert await limiter.usage([RPM5, tokens(0), slot()], 30.0) == [2, 70, 1]
    await granted(limiter, "c", [slot()], 30.0, expires_at=40.0)
    assert await limiter.usage([slot()], 35.0) == [2]
    assert await limiter.usage([slot()], 45.0) == [1]  # c's slot expired at 40
    assert await limiter.usage([RPM5, tokens(0)], 75.0) == [1, 30]  # a left at 70
    assert await limiter.usage([Check("none:requests", "requests", 5, 60.0, 1)], 75.0) == [0]
