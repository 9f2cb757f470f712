"""One Redis round trip before a proxied call and one after, for its rate limits and its
budget and wallet holds together (``spendgate.guard``), on the machine's real Redis.

Round trips are counted on the gateway's own Redis clients: every command they send goes
through ``execute_command``, which the tests wrap to note it (the real server still runs
it). Housekeeping (the reapers, on a real-time timer) is left out of the count by its
task name. The clock is frozen; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from spendgate.core.rate_rules import CheckTemplate
from spendgate.counters import BucketState, Generation, Hold, Refusal, Settlement
from spendgate.counters.memory import MemoryCounters
from spendgate.counters.redis import RedisCounters
from spendgate.counters.redis_pool import lua_script, pooled_client
from spendgate.counters.redis_wire import PipelinedRedis
from spendgate.guard import joint_backend
from spendgate.guard.enforcement import Admission, HoldPlan
from spendgate.guard.redis import JointRedis, joint_script, same_database
from spendgate.ratelimit import Check, Denial, Granted
from spendgate.ratelimit.gate import RatePlan
from spendgate.ratelimit.memory import MemoryRateLimiter
from spendgate.ratelimit.redis import RedisRateLimiter
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from spendgate.testing.processes import PrivateRedis
from tests.conftest import REDIS_URL, RunningGateway, redis_keyspace, start_gateway

T0 = 1_773_000_000.0
MSG = [{"role": "user", "content": "hello"}]
SCRIPTS = {
    hashlib.sha1(joint_script(name).encode()).hexdigest(): f"joint {name}"
    for name in ("acquire", "finish")
}
SCRIPTS[hashlib.sha1(lua_script("spendgate.counters", "generation").encode()).hexdigest()] = (
    "generation"
)
ONE_CALL = ["joint acquire", "joint finish"]


# -- the HTTP hot path, counted ---------------------------------------------------------------


def count_commands(client: Redis | PipelinedRedis, seen: list[str]) -> None:
    """Note every command ``client`` sends (scripts by name), except housekeeping's:
    a redis-py client, or the scripts' pipelined connection."""
    pipelined = isinstance(client, PipelinedRedis)
    real = client.call if pipelined else client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        task = asyncio.current_task()
        if task is None or task.get_name() not in ("housekeeping", "heartbeat"):
            name = str(args[0]).upper()
            seen.append(SCRIPTS.get(str(args[1]), "other script") if name == "EVALSHA" else name)
        return await real(*args, **options)

    if pipelined:
        client.call = counting  # type: ignore[method-assign,union-attr]
    else:
        client.execute_command = counting  # type: ignore[method-assign,union-attr]


@pytest.fixture
def redis_gateway(
    upstream: tuple[FakeUpstream, ServerHandle], fake: FakeUpstream, tmp_path: Path
) -> Iterator[RunningGateway]:
    """The gateway on SQLite with its budgets, wallets and rate limits in the real Redis."""
    running = start_gateway(
        f"sqlite:///{tmp_path / 'guard.db'}",
        upstream[1].url,
        tmp_path,
        demo=True,
        env_extra={"SPENDGATE_REDIS_URL": REDIS_URL},
    )
    yield running
    running.admin.close()
    running.handle.stop()


def counted(gw: RunningGateway) -> list[str]:
    seen: list[str] = []
    services = gw.app.services
    limiter = services.rate_gate.limiter
    assert isinstance(services.counters, RedisCounters) and isinstance(limiter, RedisRateLimiter)
    count_commands(services.counters.client, seen)
    count_commands(services.counters.wire, seen)
    count_commands(limiter.client, seen)
    return seen


def chat(gw: RunningGateway, key: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "demo-small", "messages": MSG, "max_tokens": 20, **extra},
    )


def guarded_key(
    gw: RunningGateway, *, rpm: int = 100, wallet_usd: str | None = "5", budget_usd: str = "5"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A key under a rate limit (rpm and tpm), a hard-capped budget and (unless None) a
    wallet; returns the key and the budget."""
    key = gw.create_key()
    gw.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": rpm, "tpm": 100_000},
    )
    made = gw.post(
        "/admin/budgets",
        {
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": budget_usd,
            "hard_limit": True,
            "period": "monthly",
            "timezone": "UTC",
        },
    )
    if wallet_usd is not None:
        gw.post(
            "/admin/wallets",
            {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": wallet_usd},
        )
    return key, made


def test_one_round_trip_before_and_one_after_the_call(redis_gateway: RunningGateway) -> None:
    """With a rate limit, a budget and a wallet on a key: one EVALSHA takes all of them,
    one settles all of them, and nothing else reaches Redis (wallet levels included)."""
    gw = redis_gateway
    key, made = guarded_key(gw)
    assert chat(gw, key["key"]).status_code == 200  # seeds the buckets: a one-time cost
    seen = counted(gw)
    for n in range(3):
        response = chat(gw, key["key"])
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == str(98 - n)
        assert "x-ratelimit-reset-tokens" in response.headers
        assert "x-spendgate-budget-remaining-usd" in response.headers
        assert seen == ONE_CALL, seen
        seen.clear()
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key['key']}"},
        json={"model": "demo-small", "messages": MSG, "stream": True},
    ) as streamed:
        assert streamed.status_code == 200
        list(streamed.iter_lines())
    assert seen == ONE_CALL
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    assert status["reserved_usd"] == "0.00" and status["spent_usd"] != "0.00"


def test_commands_per_call_by_what_governs_it(redis_gateway: RunningGateway) -> None:
    """Redis commands per call (issue 21.1): a key with no policy reads the generation
    (one script, nothing after); a budget alone is one joint script before and one
    after, as with a rate limit, a budget and a wallet together; a streamed call the same.
    """
    gw = redis_gateway
    bare = gw.create_key()
    budgeted = gw.create_key()
    gw.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": budgeted["id"], "amount_usd": "5", "hard_limit": True},
    )
    everything, _ = guarded_key(gw)
    for key in (bare, budgeted, everything):
        assert chat(gw, key["key"]).status_code == 200  # seeds the buckets: a one-time cost
    seen = counted(gw)
    figures = {}
    for name, key in (("none", bare), ("budget", budgeted), ("all", everything)):
        assert chat(gw, key["key"]).status_code == 200
        figures[name] = list(seen)
        seen.clear()
    assert figures == {"none": ["generation"], "budget": ONE_CALL, "all": ONE_CALL}


def test_a_stale_snapshot_is_reloaded_and_the_call_planned_again(
    redis_gateway: RunningGateway,
) -> None:
    """The policy version bumped behind this process's back (as another replica's admin
    change does): the next call's acquire answers stale, writing nothing; the process
    reloads and the same call is admitted by a second acquire. The call after is back
    to one round trip each way."""
    gw = redis_gateway
    key, made = guarded_key(gw)
    assert chat(gw, key["key"]).status_code == 200
    gw.run(gw.app.services.counters.bump())
    seen = counted(gw)
    assert chat(gw, key["key"]).status_code == 200
    assert seen == ["joint acquire", "generation", "joint acquire", "joint finish"]
    seen.clear()
    assert chat(gw, key["key"]).status_code == 200
    assert seen == ONE_CALL
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    assert status["reserved_usd"] == "0.00"


def test_a_budget_refusal_takes_no_rate_limit_entry(redis_gateway: RunningGateway) -> None:
    """An empty wallet refuses (402) in the one acquire round trip, and the requests it
    refused never count against the rpm limit: after a top-up the full limit is there."""
    gw = redis_gateway
    key, _ = guarded_key(gw, rpm=2, wallet_usd=None)
    wallet = gw.post("/admin/wallets", {"scope_type": "key", "scope_id": key["id"]})
    assert chat(gw, key["key"]).status_code == 402  # seeds the buckets
    seen = counted(gw)
    for _ in range(4):
        refused = chat(gw, key["key"])
        assert refused.status_code == 402
        assert refused.json()["error"]["code"] == "insufficient_funds"
    assert seen == ["joint acquire"] * 4
    gw.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": "5"})
    seen.clear()
    assert chat(gw, key["key"]).headers["x-ratelimit-remaining-requests"] == "1"
    assert chat(gw, key["key"]).headers["x-ratelimit-remaining-requests"] == "0"
    over = chat(gw, key["key"])
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert over.headers["retry-after"] == "60" and over.headers["x-ratelimit-limit-requests"] == "2"
    assert seen == [*ONE_CALL, *ONE_CALL, "joint acquire"]


def test_a_rate_limit_refusal_reserves_no_budget(redis_gateway: RunningGateway) -> None:
    """Over the rpm limit: 429 rate_limit_exceeded in one round trip, nothing reserved or
    spent in the budget beyond the calls that went through."""
    gw = redis_gateway
    key, made = guarded_key(gw, rpm=1)
    first = chat(gw, key["key"])
    assert first.status_code == 200
    seen = counted(gw)
    refused = chat(gw, key["key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert seen == ["joint acquire"]
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    assert status["reserved_usd"] == "0.00"
    assert status["spent_usd"] == first.headers["x-spendgate-cost-usd"]


def test_a_budget_refusal_keeps_its_error(redis_gateway: RunningGateway) -> None:
    """A full budget still answers 429 budget_exceeded with Retry-After, from one round trip."""
    gw = redis_gateway
    key, _ = guarded_key(gw, wallet_usd=None, budget_usd="0.000001")
    assert chat(gw, key["key"]).status_code == 429  # seeds the buckets
    seen = counted(gw)
    refused = chat(gw, key["key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert int(refused.headers["retry-after"]) > 0
    assert seen == ["joint acquire"]


def test_an_upstream_error_is_one_round_trip_after(
    redis_gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A provider error: the request counts against the rpm limit, the holds are given
    back, and both happen in the one finishing round trip."""
    gw = redis_gateway
    key, made = guarded_key(gw, rpm=5)
    assert chat(gw, key["key"], model="gpt-4o-mini").status_code == 200
    seen = counted(gw)
    fake.fail_status, fake.fail_count = 503, 1
    failed = chat(gw, key["key"], model="gpt-4o-mini")
    assert failed.status_code == 503
    assert seen == ONE_CALL
    assert failed.headers["x-ratelimit-remaining-requests"] == "3"
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    assert status["reserved_usd"] == "0.00"


def test_unreachable_redis_is_503_on_the_joint_path(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    """Only a rate limit, so no budget bucket to seed: the joint acquire itself meets the
    dead server, and the call gets 503 state_unavailable."""
    other = start_gateway(
        f"sqlite:///{tmp_path / 'down.db'}",
        upstream[1].url,
        tmp_path,
        demo=True,
        env_extra={"SPENDGATE_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    try:
        key = other.create_key()
        other.post(
            "/admin/rate-limits",
            {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": 5},
        )
        response = chat(other, key["key"])
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "state_unavailable"
    finally:
        other.admin.close()
        other.handle.stop()


# -- the joint scripts, directly ---------------------------------------------------------------


@pytest.fixture
async def backends() -> AsyncIterator[tuple[RedisRateLimiter, RedisCounters, JointRedis]]:
    async with redis_keyspace() as prefix:
        limiter = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        counters = RedisCounters.from_url(REDIS_URL, prefix=prefix)
        yield limiter, counters, JointRedis(limiter, counters)
        await limiter.aclose()
        await counters.aclose()


def rate(rid: str, *checks: Check, now: float = T0) -> RatePlan:
    return RatePlan(
        rid,
        "key_1",
        None,
        "org_1",
        "m",
        (),
        CheckTemplate(()),
        list(checks),
        datetime.fromtimestamp(now, UTC),
        now,
        now + 600,
    )


def money(rid: str, *holds: Hold) -> HoldPlan:
    return HoldPlan(
        Admission(rid, 0, (), ()), list(holds), T0 + 600, datetime.fromtimestamp(T0, UTC)
    )


async def acquire(
    joint: JointRedis, rate: RatePlan | None, money: HoldPlan | None
) -> Denial | Refusal | Granted | Generation:
    """The joint acquire, planned at the counters' current generation."""
    return await joint.acquire(await joint.counters.generation(), rate, money)


RPM_2 = Check("lim:requests", "requests", 2, 60.0, 1)
SLOT = Check("lim:concurrency", "concurrency", 1, 0, 1)


async def keys_under(limiter: RedisRateLimiter, pattern: str) -> list[bytes]:
    return [key async for key in limiter.client.scan_iter(match=limiter.prefix + pattern)]


async def test_a_counters_refusal_writes_no_rate_limit_entry(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    limiter, counters, joint = backends
    await counters.seed("b", 0)
    refused = await acquire(joint, rate("r1", RPM_2, SLOT), money("m1", Hold("b", 50, cap=40)))
    assert refused == Refusal("b", 0, 0, 40)
    assert await keys_under(limiter, "rl:*") == []
    assert await counters.state("b") is not None
    assert (await counters.state("b")).reserved == 0  # type: ignore[union-attr]
    granted = await limiter.acquire("r2", [RPM_2, SLOT], T0, T0 + 600)
    assert isinstance(granted, Granted) and granted.results[0].remaining == 1


async def test_a_joint_refusal_names_every_hold_that_does_not_fit(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    """The joint acquire checks a refused call's holds to the end, as ``reserve.lua``:
    each cap it would pass, with its figures, the first first; none is taken."""
    _, counters, joint = backends
    await counters.seed("a", 30)
    await counters.seed("b", 0)
    await counters.seed("c", 90)
    holds = (Hold("a", 20, cap=40), Hold("b", 20, cap=40), Hold("c", 20, cap=100))

    refused = await acquire(joint, rate("r1", RPM_2), money("m1", *holds))

    assert refused == Refusal("a", 30, 0, 40, also=(Refusal("c", 90, 0, 100),))
    assert await counters.state("b") == BucketState(0, 0, None)


async def test_a_rate_limit_denial_reserves_nothing(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    limiter, counters, joint = backends
    await counters.seed("b", 0)
    assert isinstance(await limiter.acquire("busy", [SLOT], T0, T0 + 600), Granted)
    denied = await acquire(joint, rate("r1", RPM_2, SLOT), money("m1", Hold("b", 10, cap=40)))
    assert isinstance(denied, Denial) and denied.check == SLOT and denied.used == 1
    state = await counters.state("b")
    assert state is not None and state.reserved == 0
    assert await counters.client.zcard(counters.prefix + "reservations") == 0
    again = await limiter.acquire("r3", [RPM_2], T0, T0 + 600)  # the denied call took no request
    assert isinstance(again, Granted) and again.results[0].remaining == 1


async def test_both_granted_then_settled_together(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    limiter, counters, joint = backends
    await counters.seed("b", 100)
    await counters.seed("w", 0, cap=1_000)
    tokens = Check("lim:tokens", "tokens", 500, 60.0, 300)
    granted = await acquire(
        joint,
        rate("r1", RPM_2, tokens, SLOT),
        money("m1", Hold("b", 200, cap=1_000), Hold("w", 200, use_stored_cap=True)),
    )
    assert isinstance(granted, Granted)
    assert [r.remaining for r in granted.results] == [1, 200, 0]
    assert (await counters.state("b")).reserved == 200  # type: ignore[union-attr]
    results = await joint.finish(
        "r1", {"lim:tokens": 120}, "m1", [Settlement("b", 200, 70), Settlement("w", 200, 70)]
    )
    assert results == [(100, 170, None), (0, 70, 1_000)]
    for bucket in ("b", "w"):
        assert (await counters.state(bucket)).reserved == 0  # type: ignore[union-attr]
    after = await limiter.acquire("r2", [RPM_2, tokens, SLOT], T0, T0 + 600)
    assert isinstance(after, Granted)  # the slot is free, 120 of 500 tokens used
    assert [r.remaining for r in after.results] == [0, 80, 0]


async def test_finish_releases_either_half(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    """Never forwarded: both released. A provider error: the request stays counted, the
    money is released. A second finish changes nothing."""
    limiter, counters, joint = backends
    await counters.seed("b", 0)
    for rid in ("gone", "failed"):
        assert isinstance(
            await acquire(joint, rate(rid, RPM_2), money(f"m-{rid}", Hold("b", 10, cap=100))),
            Granted,
        )
    assert await joint.finish("gone", None, "m-gone", None) == []
    assert await joint.finish("failed", {}, "m-failed", None) == []
    assert await joint.finish("failed", {}, "m-failed", None) == []
    assert (await counters.state("b")).reserved == 0  # type: ignore[union-attr]
    left = await limiter.acquire("next", [RPM_2], T0, T0 + 600)
    assert isinstance(left, Granted) and left.results[0].remaining == 0  # "failed" counts


async def test_a_lone_half_works(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    """Rate limits without budgets, budgets without rate limits: still one script each."""
    _, counters, joint = backends
    await counters.seed("b", 0)
    only_rate = await acquire(joint, rate("r1", RPM_2), None)
    assert isinstance(only_rate, Granted) and only_rate.results[0].remaining == 1
    assert await acquire(joint, None, money("m1", Hold("b", 10, cap=100))) == Granted(())
    assert await joint.finish("r1", {}, None, None) == []
    assert await joint.finish(None, None, "m1", [Settlement("b", 10, 4)]) == [(0, 4, None)]


#: Redis commands the joint scripts run for one call with a budget, a wallet and
#: requests/tokens/concurrency limits, acquire and settle, once the windows hold entries
COMMANDS_PER_CALL = 47


async def test_the_commands_one_call_runs_inside_the_joint_scripts() -> None:
    """Counted by the server itself (INFO commandstats, on a Redis of its own): what a
    call costs Redis is mostly these commands, so a change that adds some shows here."""
    with PrivateRedis() as server:
        limiter = RedisRateLimiter.from_url(server.url)
        counters = RedisCounters.from_url(server.url)
        joint = JointRedis(limiter, counters)
        await counters.seed("b", 0)
        await counters.seed("w", 0, cap=10**12)
        checks = [RPM_2, Check("lim:tokens", "tokens", 10**6, 60.0, 300), SLOT]
        holds = [Hold("b", 500, cap=10**12), Hold("w", 500, use_stored_cap=True)]
        admin = Redis.from_url(server.url)

        planned = await counters.generation()

        async def one_call(rid: str) -> None:
            granted = await joint.acquire(planned, rate(rid, *checks), money(rid, *holds))
            assert isinstance(granted, Granted)
            settled = [Settlement("b", 500, 200), Settlement("w", 500, 200)]
            assert await joint.finish(rid, {"lim:tokens": 100}, rid, settled)

        try:
            await one_call("r1")
            await admin.config_resetstat()
            await one_call("r2")
            stats = await admin.info("commandstats")
            inside = {
                name.removeprefix("cmdstat_"): figures["calls"]
                for name, figures in stats.items()
                if not name.startswith(("cmdstat_evalsha", "cmdstat_config", "cmdstat_info"))
            }
            assert sum(inside.values()) == COMMANDS_PER_CALL, sorted(inside.items())
        finally:
            await admin.aclose()
            await limiter.aclose()
            await counters.aclose()


async def test_figures_above_2_to_the_53_are_exact_in_the_joint_scripts(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    """A $20,000,000 hard cap, a wallet funded with as much and a $20,000,000 spend limit,
    each filled to one nano below by one call: the next call's hold of two nanos is
    refused by each, one nano fits all three at once."""
    _, counters, joint = backends
    cap = 20_000_000 * 10**9
    await counters.seed("b", 0)
    await counters.seed("w", 0, cap=cap)

    def spend(amount: int) -> Check:
        return Check("lim:spend", "spend", cap, 600.0, amount)

    def holds(amount: int) -> list[Hold]:
        return [Hold("b", amount, cap=cap), Hold("w", amount, use_stored_cap=True)]

    first = await acquire(joint, rate("r1", spend(cap)), money("m1", *holds(cap)))
    assert isinstance(first, Granted)
    settled = [Settlement("b", cap, cap - 1), Settlement("w", cap, cap - 1)]
    assert await joint.finish("r1", {"lim:spend": cap - 1}, "m1", settled) == [
        (0, cap - 1, None),
        (0, cap - 1, cap),
    ]
    assert await acquire(joint, None, money("m2", holds(2)[0])) == Refusal("b", cap - 1, 0, cap)
    assert await acquire(joint, None, money("m3", holds(2)[1])) == Refusal("w", cap - 1, 0, cap)
    denied = await acquire(joint, rate("r4", spend(2)), None)
    assert isinstance(denied, Denial) and denied.used == cap - 1
    granted = await acquire(joint, rate("r5", spend(1)), money("m5", *holds(1)))
    assert isinstance(granted, Granted) and granted.results[0].remaining == 0
    assert await counters.state("b") == BucketState(cap - 1, 1, None)
    assert await counters.state("w") == BucketState(cap - 1, 1, cap)


async def test_a_stale_generation_writes_nothing(
    backends: tuple[RedisRateLimiter, RedisCounters, JointRedis],
) -> None:
    """Planned at an older policy version, or before the counters were lost (another
    epoch): the acquire answers with the stored generation and records no rate-limit
    entry and no hold."""
    limiter, counters, joint = backends
    await counters.seed("b", 0)
    planned = await counters.generation()
    await counters.bump()
    stored = await joint.acquire(planned, rate("r1", RPM_2), money("m1", Hold("b", 10, cap=100)))
    assert stored == Generation(planned.epoch, planned.version + 1)
    lost = Generation("another-epoch", stored.version)
    assert await joint.acquire(lost, rate("r2", RPM_2), money("m2", Hold("b", 10))) == stored
    assert await keys_under(limiter, "rl:*") == []
    assert await counters.state("b") == BucketState(0, 0, None)
    assert await counters.client.zcard(counters.prefix + "reservations") == 0
    assert isinstance(await joint.acquire(stored, rate("r3", RPM_2), None), Granted)


async def test_joint_only_for_redis_backends_on_one_database() -> None:
    same = [pooled_client(REDIS_URL), pooled_client(REDIS_URL)]
    other_db = pooled_client(REDIS_URL.rsplit("/", 1)[0] + "/1")
    try:
        assert same_database(same[0], same[1]) and not same_database(same[0], other_db)
        assert joint_backend(MemoryRateLimiter(), MemoryCounters()) is None
        split = joint_backend(RedisRateLimiter(same[0]), RedisCounters(other_db))
        assert split is None
        assert isinstance(
            joint_backend(RedisRateLimiter(same[0]), RedisCounters(same[1])), JointRedis
        )
    finally:
        for client in (*same, other_db):
            await client.aclose()
