"""The guard in turn on shared counters: the rate limiter on one Redis database, the
budget counters on another (not the joint scripts). The counters' generation is then
read in a step of its own before the reserve, and Redis can restart empty in between:
the reserve itself must not take holds in buckets the restart emptied (it would create
them holding only this call, and the seed would then skip them as present: the period's
spend lost and the hard cap passable until the reconciliation).

A gateway on SQLite and the machine's real Redis makes the key, its budget and the
ledger's spend; the guard under test runs on the gateway's loop with the same policy
store, ledger and counters key prefix. "Redis restarted empty" is every key under that
prefix deleted, at the moment named."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from spendgate.core.budget_rules import Subject
from spendgate.counters import Generation, PolicyStale
from spendgate.counters.redis import RedisCounters
from spendgate.errors import BudgetExceeded
from spendgate.guard import CallGuard, Guarded
from spendgate.guard.enforcement import Enforcer
from spendgate.ratelimit.gate import RateGate
from spendgate.ratelimit.redis import RedisRateLimiter
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import REDIS_URL, RunningGateway, migrated_sqlite, start_gateway

#: the rate limiter's database: another one than the counters' (``REDIS_URL``)
OTHER_DATABASE = REDIS_URL.rsplit("/", 1)[0] + "/1"
CAP = 10**9  # the key's budget: $1, hard


class RestartsAfterTheCheck(RedisCounters):
    """Counters whose Redis restarts empty right after the next generation read once
    ``armed``: in turn, that read is an admission's check, just before its reserve."""

    armed = False

    async def generation(self) -> Generation:
        current = await super().generation()
        if self.armed:
            self.armed = False
            await self.restart_empty()
        return current

    async def restart_empty(self) -> None:
        """What a Redis restarted empty is to these counters: every key of theirs gone."""
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}*")]
        await self.client.delete(*keys)


@pytest.fixture
def gateway(
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    sqlite_template: Path,
) -> Iterator[tuple[RunningGateway, str]]:
    prefix = f"sgtest:{uuid.uuid4().hex}:"
    env = {"SPENDGATE_REDIS_URL": REDIS_URL, "SPENDGATE_REDIS_PREFIX": prefix}
    database = migrated_sqlite(sqlite_template, tmp_path / "spendgate.db")
    gw = start_gateway(database, upstream[1].url, tmp_path, env_extra=env)
    try:
        yield gw, prefix
    finally:
        gw.admin.close()
        gw.handle.stop()
        for url in (REDIS_URL, OTHER_DATABASE):
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


class InTurn:
    """A guard on counters (``RestartsAfterTheCheck``) and a rate limiter in two Redis
    databases, admitting as the proxy does: a stale generation reloads and plans again."""

    def __init__(self, gw: RunningGateway, prefix: str) -> None:
        services, emit = gw.app.services, (lambda *event: None)
        self.counters = RestartsAfterTheCheck.from_url(REDIS_URL, prefix=prefix)
        self.enforcer = Enforcer(
            services.policies,
            self.counters,
            services.ledger,
            gw.clock,
            emit,
            reservation_seconds=60,
        )
        limiter = RedisRateLimiter.from_url(OTHER_DATABASE, prefix=prefix)
        self.rate_gate = RateGate(limiter, gw.clock, emit, unlisted="allow", reservation_seconds=60)
        self.guard = CallGuard(self.rate_gate, self.enforcer)
        assert not self.guard.joint

    async def admit(self, subject: Subject, worst: int | None) -> Guarded:
        for _ in range(3):
            try:
                snapshot = await self.enforcer.policies()
                return await self.guard.admit(uuid.uuid4().hex, subject, 10, worst, snapshot)
            except PolicyStale as stale:
                await self.enforcer.resync(stale.seen)
        raise AssertionError("still stale after reloading twice")

    async def aclose(self) -> None:
        await self.counters.aclose()
        await self.rate_gate.aclose()


def budget_with_spend(gw: RunningGateway) -> tuple[Subject, int]:
    """A key with a $1 hard budget and two calls in the ledger (and in the budget's
    counter): the key's calls as the guard sees them, and the ledger's spend."""
    key = gw.create_key()
    gw.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "amount_usd": "1", "hard_limit": True},
    )
    for _ in range(2):
        answer = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key['key']}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    spent = sum(r["cost_nanos"] for r in gw.ledger())
    assert spent > 0
    subject = Subject(
        key["org_id"], None, None, None, key["id"], (), "openai", "gpt-4o-mini", "chat"
    )
    return subject, spent


def test_a_restart_between_the_check_and_the_reserve_loses_no_spend(
    gateway: tuple[RunningGateway, str],
) -> None:
    """The key's budget has the spend of two calls. Redis restarts empty between a call's
    generation check and its reserve: the reserve takes nothing, the call is planned
    again on buckets seeded from the ledger, and a call whose worst case is more than
    the ledger leaves under the cap is then refused. (Before: the reserve re-created the
    bucket holding only that call, the seed skipped it as present, the counter had lost
    the two calls, and the call over the cap was admitted.)"""
    gw, prefix = gateway
    subject, before = budget_with_spend(gw)

    async def scenario() -> tuple[int, int, BudgetExceeded | None]:
        in_turn = InTurn(gw, prefix)
        try:
            # a call first: the policies are loaded and the bucket seeded in this process
            await in_turn.guard.release(await in_turn.admit(subject, 1_000))
            in_turn.counters.armed = True
            guarded = await in_turn.admit(subject, 1_000)
            assert not in_turn.counters.armed  # the restart came between check and reserve
            await in_turn.guard.settle(guarded, 10, 700)
            (bucket,) = guarded.admission.buckets
            state = await in_turn.counters.state(bucket)
            assert state is not None
            try:
                await in_turn.admit(subject, CAP - (before + 700) + 1)
            except BudgetExceeded as refused:
                return state.spent, state.reserved, refused
            return state.spent, state.reserved, None
        finally:
            await in_turn.aclose()

    spent, reserved, refused = gw.run(scenario())
    assert isinstance(refused, BudgetExceeded)
    assert (spent, reserved) == (before + 700, 0)


def test_a_call_running_across_a_restart_settles_into_no_recreated_bucket(
    gateway: tuple[RunningGateway, str],
) -> None:
    """Redis restarts empty while a call admitted in turn runs: its settle re-creates no
    bucket at its one call's cost (the seed would skip it) and adds the cost nowhere;
    the call is marked uncounted (its ledger row brings the cost to the bucket), and the
    next call finds the bucket seeded from the ledger."""
    gw, prefix = gateway
    subject, before = budget_with_spend(gw)

    async def scenario() -> tuple[bool, bool, int | None]:
        in_turn = InTurn(gw, prefix)
        try:
            guarded = await in_turn.admit(subject, 1_000)
            await in_turn.counters.restart_empty()  # while the call runs
            await in_turn.guard.settle(guarded, 10, 700)
            (bucket,) = guarded.admission.buckets
            recreated = await in_turn.counters.exists(bucket)
            await in_turn.guard.release(await in_turn.admit(subject, 1_000))
            state = await in_turn.counters.state(bucket)
            return guarded.uncounted, recreated, None if state is None else state.spent
        finally:
            await in_turn.aclose()

    uncounted, recreated, spent = gw.run(scenario())
    assert uncounted and not recreated
    assert spent == before


def test_an_unpriced_call_is_refused_in_turn_and_leaves_nothing_held(
    gateway: tuple[RunningGateway, str],
) -> None:
    """In turn, a call whose price is unknown (worst case None) under a hard cap is
    refused before any budget hold is taken, with no ``Retry-After`` and no retry, and
    the rate-limit entry taken just before it is given back: the key's rpm window and its
    budget's counter are as they were."""
    gw, prefix = gateway
    priced, before = budget_with_spend(gw)
    gw.post("/admin/rate-limits", {"scope_type": "key", "scope_id": priced.key_id, "rpm": 5})
    subject = Subject(
        priced.org_id, None, None, None, priced.key_id, (), "local", "mystery-model", "chat"
    )

    async def scenario() -> tuple[BudgetExceeded, list[int], tuple[int, int]]:
        in_turn = InTurn(gw, prefix)
        try:
            with pytest.raises(BudgetExceeded) as info:
                await in_turn.admit(subject, None)
            snapshot = await in_turn.enforcer.policies()
            used = await in_turn.rate_gate.usage(snapshot.rate_limits[subject.key_id])
            (budget,), _ = in_turn.enforcer.applicable(snapshot, subject, gw.clock.now())
            state = await in_turn.counters.state(budget.bucket)
            assert state is not None
            return info.value, [n for _, _, n in used], (state.spent, state.reserved)
        finally:
            await in_turn.aclose()

    refused, used, counted = gw.run(scenario())
    assert "price of model 'mystery-model' is unknown" in refused.message
    assert refused.retry_after is None and refused.headers()["x-should-retry"] == "false"
    assert "retry-after" not in refused.headers()
    assert used == [0] and counted == (before, 0)
