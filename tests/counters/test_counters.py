"""The live money counters on every backend: memory and the machine's real Redis.

Redis must be running (``SPENDGATE_TEST_REDIS``, default 127.0.0.1:6379/0): the tests
fail, never skip, without it. Each test gets its own random key prefix and deletes its
keys afterwards. Time is passed in as plain numbers; nothing sleeps or reads the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from spendgate.counters import (
    BucketState,
    Counters,
    Generation,
    Hold,
    PolicyStale,
    Refusal,
    Settlement,
)
from spendgate.counters.factory import counters_from_url
from spendgate.counters.memory import MemoryCounters
from spendgate.counters.redis import RedisCounters
from spendgate.guard.reconcile import catch_up
from tests.conftest import REDIS_URL, redis_keyspace

EXPIRES = 1_800_000_000.0


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    """Empty counters on each backend."""
    if request.param == "memory":
        yield MemoryCounters()
        return
    async with redis_keyspace() as prefix:
        store = RedisCounters.from_url(REDIS_URL, prefix=prefix)
        try:
            yield store
        finally:
            await store.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix on the real Redis, for tests that build their own clients."""
    async with redis_keyspace() as prefix:
        yield prefix


async def test_seed_only_if_absent(counters: Counters) -> None:
    """Seeding sets a new bucket's figures once; a second seed changes nothing."""
    assert not await counters.exists("b:team:2026-05")
    assert await counters.state("b:team:2026-05") is None
    assert await counters.seed("b:team:2026-05", 1_234) is True
    assert await counters.seed("b:team:2026-05", 9_999, cap=5) is False
    assert await counters.exists("b:team:2026-05")
    assert await counters.state("b:team:2026-05") == BucketState(1_234, 0, None)
    assert await counters.seed("w:wallet", 7, cap=500) is True
    assert await counters.state("w:wallet") == BucketState(7, 0, 500)


async def test_reserve_is_all_or_nothing(counters: Counters) -> None:
    """When the second of three holds does not fit, none is taken and it is named."""
    await counters.seed("a", 0)
    await counters.seed("b", 90)
    await counters.seed("c", 0)
    assert await counters.reserve("r0", [Hold("b", 5, cap=100)], EXPIRES) is None
    holds = [Hold("a", 20, cap=1_000), Hold("b", 20, cap=100), Hold("c", 20, cap=1_000)]

    refusal = await counters.reserve("r1", holds, EXPIRES)

    assert refusal == Refusal("b", spent=90, reserved=5, cap=100)
    assert await counters.state("a") == BucketState(0, 0, None)
    assert await counters.state("b") == BucketState(90, 5, None)
    assert await counters.state("c") == BucketState(0, 0, None)
    assert await counters.reap(EXPIRES + 1) == 1  # only r0 was ever recorded


async def test_a_refusal_names_every_hold_that_does_not_fit(counters: Counters) -> None:
    """A call over two caps and a wallet's funds is refused naming each of them in hold
    order, each with its bucket's figures (the enforcer marks every cap that refused
    it, not only the first); the holds that fit are not named, and nothing is taken."""
    await counters.seed("fits", 0)
    await counters.seed("first", 90)
    await counters.seed("second", 70)
    await counters.seed("w", 10, cap=50)
    assert await counters.reserve("r0", [Hold("second", 5, cap=100)], EXPIRES) is None
    holds = [
        Hold("fits", 30, cap=1_000),
        Hold("first", 30, cap=100),
        Hold("fits", 30, cap=1_000),
        Hold("second", 30, cap=100),
        Hold("w", 45, use_stored_cap=True),
    ]

    refusal = await counters.reserve("r1", holds, EXPIRES)

    assert refusal == Refusal(
        "first", 90, 0, 100, also=(Refusal("second", 70, 5, 100), Refusal("w", 10, 0, 50))
    )
    assert refusal.every() == (refusal, *refusal.also)
    assert await counters.state("fits") == BucketState(0, 0, None)
    assert await counters.state("second") == BucketState(70, 5, None)
    assert await counters.reap(EXPIRES + 1) == 1  # only r0 was ever recorded


async def test_a_call_under_thousands_of_budgets_is_held_and_settled(counters: Counters) -> None:
    """3,000 holds (9,002 ARGV values, past what one Lua ``unpack`` can return): every
    bucket is held, and settled, as with a few."""
    holds = [Hold(f"many:{i}", 3, cap=100) for i in range(3_000)]

    assert await counters.reserve("r-many", holds, EXPIRES) is None
    assert await counters.state("many:2999") == BucketState(0, 3, None)
    await counters.settle("r-many", [Settlement(h.bucket, 3, 2) for h in holds])

    assert await counters.state("many:0") == BucketState(2, 0, None)
    assert await counters.state("many:2999") == BucketState(2, 0, None)


async def test_reserve_exact_fit_and_no_cap(counters: Counters) -> None:
    """A hold that lands exactly on the cap fits; one more nano does not; no cap never refuses."""
    await counters.seed("a", 60)
    assert await counters.reserve("r1", [Hold("a", 40, cap=100)], EXPIRES) is None
    assert await counters.reserve("r2", [Hold("a", 1, cap=100)], EXPIRES) == Refusal(
        "a", 60, 40, 100
    )
    assert await counters.reserve("r3", [Hold("a", 10**12)], EXPIRES) is None
    assert await counters.state("a") == BucketState(60, 40 + 10**12, None)


async def test_repeated_bucket_counts_every_hold(counters: Counters) -> None:
    """Two holds on one bucket in one call are checked together, not each alone."""
    await counters.seed("a", 0)
    refusal = await counters.reserve(
        "r1", [Hold("a", 60, cap=100), Hold("a", 60, cap=100)], EXPIRES
    )
    assert refusal is not None and refusal.bucket == "a"
    assert await counters.state("a") == BucketState(0, 0, None)
    assert (
        await counters.reserve("r2", [Hold("a", 50, cap=100), Hold("a", 50, cap=100)], EXPIRES)
        is None
    )
    await counters.release("r2")
    assert await counters.state("a") == BucketState(0, 0, None)


async def test_two_settlements_in_one_bucket_each_see_the_other(counters: Counters) -> None:
    """Two holds on one bucket settled in one call: the second settlement starts from
    what the first left (its spent before is the first's spent after)."""
    await counters.seed("a", 1_000)
    holds = [Hold("a", 60, cap=2_000), Hold("a", 40, cap=2_000)]
    assert await counters.reserve("r1", holds, EXPIRES) is None
    assert await counters.reserve("r2", [Hold("a", 5)], EXPIRES) is None

    result = await counters.settle("r1", [Settlement("a", 60, 30), Settlement("a", 40, 20)])

    assert result == [(1_000, 1_030), (1_030, 1_050)]
    assert await counters.state("a") == BucketState(1_050, 5, None)


async def test_stored_cap_refuses_without_funds_then_allows_after_top_up(
    counters: Counters,
) -> None:
    """A wallet with no top-ups has no funds; add_cap raises what it can hold, once the
    wallet is seeded (before that it writes nothing: the seed reads every top-up)."""
    wallet = [Hold("w:acme", 60, use_stored_cap=True)]
    assert await counters.reserve("r1", wallet, EXPIRES) == Refusal("w:acme", 0, 0, 0)
    await counters.add_cap("w:acme", 100)
    assert await counters.state("w:acme") is None

    await counters.seed("w:acme", 0)
    await counters.add_cap("w:acme", 100)
    assert await counters.reserve("r2", wallet, EXPIRES) is None
    assert await counters.reserve("r3", wallet, EXPIRES) == Refusal("w:acme", 0, 60, 100)

    await counters.add_cap("w:acme", 50)
    assert await counters.reserve("r4", wallet, EXPIRES) is None
    assert await counters.state("w:acme") == BucketState(0, 120, 150)


async def test_settle_moves_reserved_to_spent(counters: Counters) -> None:
    """Settling gives back the hold, adds the actual cost, and reports spent before/after."""
    await counters.seed("a", 1_000)
    await counters.seed("w", 0, cap=10_000)
    holds = [Hold("a", 100, cap=5_000), Hold("w", 100, use_stored_cap=True)]
    assert await counters.reserve("r1", holds, EXPIRES) is None
    assert await counters.reserve("r2", [Hold("a", 7)], EXPIRES) is None

    result = await counters.settle("r1", [Settlement("a", 100, 30), Settlement("w", 100, 40)])

    assert result == [(1_000, 1_030), (0, 40)]
    assert await counters.state("a") == BucketState(1_030, 7, None)
    assert await counters.state("w") == BucketState(40, 0, 10_000)
    assert await counters.reap(EXPIRES + 1) == 1  # r1 is forgotten; only r2 remains


async def test_settle_releases_holds_it_does_not_mention(counters: Counters) -> None:
    """A settled reservation is forgotten whole: holds without a settlement are given back."""
    await counters.seed("a", 0)
    await counters.seed("b", 0)
    assert await counters.reserve("r1", [Hold("a", 100), Hold("b", 100)], EXPIRES) is None
    assert await counters.settle("r1", [Settlement("a", 100, 70)]) == [(0, 70)]
    assert await counters.state("a") == BucketState(70, 0, None)
    assert await counters.state("b") == BucketState(0, 0, None)


async def test_release_is_idempotent(counters: Counters) -> None:
    """Releasing twice gives back only what that reservation held, once."""
    await counters.seed("a", 0)
    await counters.seed("b", 0)
    assert await counters.reserve("r1", [Hold("a", 50), Hold("b", 50)], EXPIRES) is None
    assert await counters.reserve("r2", [Hold("a", 20)], EXPIRES) is None

    await counters.release("r1")
    await counters.release("r1")
    await counters.release("never-reserved")

    assert await counters.state("a") == BucketState(0, 20, None)
    assert await counters.state("b") == BucketState(0, 0, None)


async def test_reap_releases_only_expired(counters: Counters) -> None:
    """Reaping at ``now`` releases reservations expiring strictly before it, once."""
    await counters.seed("a", 0)
    for rid, expires in (("r100", 100.0), ("r200", 200.0), ("r300", 300.5)):
        assert await counters.reserve(rid, [Hold("a", int(expires))], expires) is None

    assert await counters.reap(200.0) == 1
    assert await counters.state("a") == BucketState(0, 500, None)
    assert await counters.reap(200.0) == 0
    assert await counters.reap(300.5) == 1
    assert await counters.state("a") == BucketState(0, 300, None)
    assert await counters.reap(301.0) == 1
    assert await counters.state("a") == BucketState(0, 0, None)


async def test_settle_after_reap_or_release_does_not_give_back_twice(counters: Counters) -> None:
    """A late settlement for a reaped or released reservation adds its cost only; other
    reservations' holds stay put and reserved never goes below zero."""
    await counters.seed("a", 0)
    assert await counters.reserve("late", [Hold("a", 100)], 100.0) is None
    assert await counters.reserve("gone", [Hold("a", 30)], EXPIRES) is None
    assert await counters.reserve("live", [Hold("a", 50)], EXPIRES) is None
    assert await counters.reap(101.0) == 1
    await counters.release("gone")
    assert await counters.state("a") == BucketState(0, 50, None)

    assert await counters.settle("late", [Settlement("a", 100, 80)]) == [(0, 80)]
    assert await counters.settle("gone", [Settlement("a", 30, 5)]) == [(80, 85)]

    assert await counters.state("a") == BucketState(85, 50, None)
    assert await counters.settle("live", [Settlement("a", 500, 50)]) == [(85, 135)]
    assert await counters.state("a") == BucketState(135, 0, None)


async def test_large_figures_stay_exact(counters: Counters) -> None:
    """Figures just below 2**53 nanos (about $9M, where Lua's doubles run out of exact
    integers) are compared and moved exactly: a single nano over the cap is refused."""
    top = 2**53 - 1
    await counters.seed("a", top - 10, cap=None)
    assert await counters.reserve("r1", [Hold("a", 10, cap=top)], EXPIRES) is None
    assert await counters.reserve("r2", [Hold("a", 1, cap=top)], EXPIRES) == Refusal(
        "a", top - 10, 10, top
    )
    assert await counters.settle("r1", [Settlement("a", 10, 9)]) == [(top - 10, top - 1)]
    await counters.seed("b", 0)
    assert await counters.reserve("r3", [Hold("b", top - 1)], EXPIRES) is None
    assert await counters.state("b") == BucketState(0, top - 1, None)
    await counters.release("r3")
    assert await counters.state("b") == BucketState(0, 0, None)


#: caps that a double cannot tell from their neighbours: a $20,000,000 annual budget,
#: 2**53 and one above, $1e9 (the largest the API takes) and the largest 64-bit figure
BIG_CAPS = [20_000_000 * 10**9, 2**53, 2**53 + 1, 10**18, 2**63 - 1]


@pytest.mark.parametrize("cap", BIG_CAPS)
@pytest.mark.parametrize("wallet", [False, True], ids=["budget", "wallet"])
async def test_a_cap_above_2_to_the_53_is_exact_to_the_nano(
    counters: Counters, cap: int, wallet: bool
) -> None:
    """A budget's hard cap or a wallet's balance spent to one nano below (a hold settled
    at its reserved amount): a hold of one nano fits, one of two is refused, and
    settling it lands exactly on the cap, on both backends."""
    step = min((cap - 1) // 2, 10**18)  # a call can cost at most the API's $1e9

    def hold(amount: int) -> Hold:
        return Hold("a", amount, use_stored_cap=True) if wallet else Hold("a", amount, cap=cap)

    stored = cap if wallet else None
    await counters.seed("a", cap - 1 - step, cap=stored)
    assert await counters.reserve("r1", [hold(step)], EXPIRES) is None
    assert await counters.settle("r1", [Settlement("a", step, step)]) == [(cap - 1 - step, cap - 1)]
    assert await counters.reserve("r2", [hold(2)], EXPIRES) == Refusal("a", cap - 1, 0, cap)
    assert await counters.reserve("r3", [hold(1)], EXPIRES) is None
    assert await counters.reserve("r4", [hold(1)], EXPIRES) == Refusal("a", cap - 1, 1, cap)
    assert await counters.settle("r3", [Settlement("a", 1, 1)]) == [(cap - 1, cap)]
    assert await counters.state("a") == BucketState(cap, 0, stored)


async def test_holds_above_2_to_the_53_are_given_back_to_the_nano(counters: Counters) -> None:
    """Holds of 2**53 + 1 and 1 nanos on one bucket: settling the first gives back exactly
    its hold (the other's nano stays reserved), releasing the second frees the rest."""
    big = 2**53 + 1
    await counters.seed("a", 0)
    assert await counters.reserve("r1", [Hold("a", big)], EXPIRES) is None
    assert await counters.reserve("r2", [Hold("a", 1)], EXPIRES) is None
    assert await counters.settle("r1", [Settlement("a", big, big)]) == [(0, big)]
    assert await counters.state("a") == BucketState(big, 1, None)
    await counters.release("r2")
    assert await counters.state("a") == BucketState(big, 0, None)
    assert await counters.reserve("r3", [Hold("a", big), Hold("a", 2)], EXPIRES) is None
    await counters.release("r3")
    assert await counters.state("a") == BucketState(big, 0, None)


async def test_repairs_above_2_to_the_53_are_exact(counters: Counters) -> None:
    """A repair from the ledger one nano above a figure of 2**53 raises it by that nano,
    and a catch-up one nano beyond the uncounted spend held adds that nano."""
    big = 2**53
    await counters.seed("a", big, cap=big)
    assert await counters.raise_to("a", "spent", big + 1, uncounted=big + 1) == big
    assert await counters.raise_to("a", "cap", big + 1) == big
    assert await counters.state("a") == BucketState(big + 1, 0, big + 1)
    assert await counters.catch_up("a", big + 2) == 1
    assert await counters.catch_up("a", big + 2) == 0
    assert await counters.state("a") == BucketState(big + 2, 0, big + 1)


async def test_concurrent_reserves_never_pass_the_cap(counters: Counters) -> None:
    """300 simultaneous holds of 10 against a cap of 505: exactly 50 fit, and settling
    them all at 9 each leaves 450 spent and nothing reserved."""
    await counters.seed("a", 0)
    results = await asyncio.gather(
        *(counters.reserve(f"r{i}", [Hold("a", 10, cap=505)], EXPIRES) for i in range(300))
    )

    admitted = [f"r{i}" for i, refusal in enumerate(results) if refusal is None]
    assert len(admitted) == 50
    assert all(r is None or (r.bucket == "a" and r.cap == 505) for r in results)
    assert await counters.state("a") == BucketState(0, 500, None)

    await asyncio.gather(*(counters.settle(rid, [Settlement("a", 10, 9)]) for rid in admitted))
    assert await counters.state("a") == BucketState(450, 0, None)


async def test_settle_never_recreates_a_lost_bucket(counters: Counters) -> None:
    """A bucket that vanished while its call ran (Redis restarted empty) is not created
    again at that one call's cost by the settle, and then no bucket of the call takes the
    cost (its ledger row, marked uncounted, brings it to each once): every one reads
    (0, 0), the holds are given back, and the next seed still finds the lost one missing
    and sets the ledger's figure."""
    await counters.seed("kept", 10)
    assert await counters.reserve("r1", [Hold("kept", 7)], 100.0) is None
    settled = await counters.settle("r1", [Settlement("gone", 100, 40), Settlement("kept", 7, 5)])
    assert settled == [(0, 0), (0, 0)]
    assert await counters.state("kept") == BucketState(10, 0, None)
    assert not await counters.exists("gone")
    assert await counters.seed("gone", 1_234) is True
    assert await counters.state("gone") == BucketState(1_234, 0, None)


async def test_a_catch_up_finding_its_bucket_seeded_meanwhile_adds_what_it_read(
    counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After Redis came back empty, a replica's catch-up reads the ledger (500, of which
    120 uncounted: its late row included) and finds the bucket missing; before its seed,
    another replica seeds it from an earlier read (380, none uncounted). The second seed
    is refused, so the catch-up adds the 120 the other read missed — once, however often
    it runs again."""
    first_seed = counters.seed

    async def seeded_meanwhile(
        bucket: str, spent: int, cap: int | None = None, uncounted: int = 0
    ) -> bool:
        assert await first_seed(bucket, 380, None, 0)  # the other replica, first
        return await first_seed(bucket, spent, cap, uncounted)

    monkeypatch.setattr(counters, "seed", seeded_meanwhile)
    assert await catch_up(counters, "b", 500, 120, seed=True) == 120
    monkeypatch.undo()
    assert await counters.state("b") == BucketState(500, 0, None)
    assert await catch_up(counters, "b", 500, 120, seed=True) is None
    assert await counters.state("b") == BucketState(500, 0, None)


async def test_renewed_holds_outlive_their_first_expiry(counters: Counters) -> None:
    """A heartbeat moves a live reservation's expiry; an unrenewed one is reaped, and
    renewing one already gone brings nothing back."""
    await counters.seed("a", 0)
    assert await counters.reserve("live", [Hold("a", 30)], 100.0) is None
    assert await counters.reserve("dead", [Hold("a", 20)], 100.0) is None
    await counters.renew(["live", "never"], 200.0)
    assert await counters.reap(150.0) == 1
    assert await counters.state("a") == BucketState(0, 30, None)
    await counters.renew(["dead"], 300.0)
    assert await counters.reap(250.0) == 1
    assert await counters.state("a") == BucketState(0, 0, None)


async def test_raise_to_only_raises(counters: Counters) -> None:
    """A repair from the ledger raises a figure to a floor, never lowers it, and leaves
    a bucket that does not exist alone."""
    await counters.seed("a", 100, cap=50)
    assert await counters.raise_to("a", "spent", 250) == 100
    assert await counters.raise_to("a", "spent", 200) == 250
    assert await counters.raise_to("a", "cap", 70) == 50
    assert await counters.state("a") == BucketState(250, 0, 70)
    assert await counters.raise_to("missing", "spent", 5) is None
    assert not await counters.exists("missing")


async def test_catch_up_adds_the_ledgers_uncounted_spend_once(counters: Counters) -> None:
    """After an outage a bucket takes the ledger's uncounted spend beyond what it holds
    already: the same or an older figure adds nothing (several replicas, several ticks);
    a seed's uncounted part and a raise's are held already; a bucket that does not exist
    is left alone."""
    await counters.seed("a", 1_000, uncounted=300)  # the ledger had 300 uncounted then
    assert await counters.catch_up("a", 300) == 0
    assert await counters.catch_up("a", 450) == 150
    assert await counters.catch_up("a", 450) == 0
    assert await counters.catch_up("a", 400) == 0  # an older read
    assert await counters.state("a") == BucketState(1_150, 0, None)
    # a raise to the ledger (the periodic reconciliation) takes its uncounted part along
    assert await counters.raise_to("a", "spent", 2_000, uncounted=600) == 1_150
    assert await counters.catch_up("a", 650) == 50
    assert await counters.state("a") == BucketState(2_050, 0, None)
    # a raise that changes nothing records nothing
    assert await counters.raise_to("a", "spent", 100, uncounted=900) == 2_050
    assert await counters.catch_up("a", 700) == 50
    big = 2**52 + 1  # 16 digits: added as an integer, not in Lua's "%.14g" form
    await counters.seed("b", 7)
    assert await counters.catch_up("b", big) == big
    assert await counters.state("b") == BucketState(big + 7, 0, None)
    assert await counters.catch_up("missing", 5) is None
    assert not await counters.exists("missing")


async def test_generation_epoch_is_kept_and_version_bumped(counters: Counters) -> None:
    """The first read writes an epoch that later reads keep; a bump moves the version
    only."""
    first = await counters.generation()
    await counters.bump()
    second = await counters.generation()
    assert second.epoch == first.epoch != ""
    assert second.version == first.version + 1


async def test_a_lost_epoch_is_replaced(redis_prefix: str) -> None:
    """Redis loses the generation hash (restart without persistence, FLUSHDB): the next
    read writes a new epoch, so every process sees its counters were lost."""
    store = RedisCounters.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        before = await store.generation()
        await store.client.delete(store.generation_key)
        after = await store.generation()
        assert after.epoch != before.epoch and after.version == 0
    finally:
        await store.aclose()


async def test_a_reserve_planned_under_another_generation_takes_nothing(redis_prefix: str) -> None:
    """The caller planned at a generation Redis no longer has: a policy changed, or Redis
    restarted empty after the caller's last look (its epoch gone). The reserve takes no
    hold and says what it found; above all it does not re-create a lost bucket holding
    only this call (the seed would skip it, and the period's spend would be lost)."""
    store = RedisCounters.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        planned = await store.generation()
        await store.seed("a", 500)
        assert await store.reserve("r1", [Hold("a", 10, cap=1_000)], EXPIRES, planned) is None
        await store.bump()
        with pytest.raises(PolicyStale) as changed:
            await store.reserve("r2", [Hold("a", 10, cap=1_000)], EXPIRES, planned)
        assert changed.value.seen == Generation(planned.epoch, planned.version + 1)
        assert await store.state("a") == BucketState(500, 10, None)

        await store.client.delete(*[k async for k in store.client.scan_iter(f"{redis_prefix}*")])
        with pytest.raises(PolicyStale) as lost:
            await store.reserve("r3", [Hold("a", 10, cap=1_000)], EXPIRES, changed.value.seen)
        assert lost.value.seen == Generation("", 0)
        assert not await store.exists("a")
        assert await store.reap(EXPIRES + 1) == 0  # no reservation recorded either
    finally:
        await store.aclose()


async def test_two_redis_clients_racing_never_pass_the_cap(redis_prefix: str) -> None:
    """Two independent clients (as two replicas would be) share one bucket's cap. Each
    pipelines its calls on one connection; both are connected before the race, so
    Redis takes their commands interleaved."""
    first = RedisCounters.from_url(REDIS_URL, prefix=redis_prefix)
    second = RedisCounters.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        await first.seed("a", 0)
        await asyncio.gather(first.generation(), second.generation())
        calls = [
            (first if i % 2 else second).reserve(f"r{i}", [Hold("a", 10, cap=1_005)], EXPIRES)
            for i in range(400)
        ]
        results = await asyncio.gather(*calls)
        assert sum(r is None for r in results) == 100
        assert {i % 2 for i, r in enumerate(results) if r is None} == {0, 1}
        assert await second.state("a") == BucketState(0, 1_000, None)
        assert await first.reap(EXPIRES + 1) == 100
        assert await second.state("a") == BucketState(0, 0, None)
    finally:
        await first.aclose()
        await second.aclose()


async def test_backend_is_chosen_by_url() -> None:
    """No URL or memory:// gives memory counters, redis:// gives Redis, anything else fails."""
    assert isinstance(counters_from_url(None), MemoryCounters)
    assert isinstance(counters_from_url("memory://"), MemoryCounters)
    store = counters_from_url(REDIS_URL, prefix="sgtest:factory:")
    try:
        assert isinstance(store, RedisCounters) and store.prefix == "sgtest:factory:"
        assert not await store.exists("nothing")
    finally:
        await store.aclose()
    with pytest.raises(ValueError, match="unsupported counters URL"):
        counters_from_url("postgresql://localhost/x")
