"""Forecast storage on every backend: daily spend by local day from one ledger pass, the
latest forecast per budget, overrun events once per period (or once per configured band),
and the admin routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.admin.forecasts import router as forecasts_router
from spendgate.core.budget_rules import Budget
from spendgate.core.clock import FrozenClock
from spendgate.counters.memory import MemoryCounters
from spendgate.errors import ConfigError, SpendgateError
from spendgate.guard.enforcement import Enforcer
from spendgate.security.auth_throttle import AuthThrottle
from spendgate.services import Services
from spendgate.settings import load_settings
from spendgate.stopping import Stop
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.events import list_events
from spendgate.store.forecasts import (
    DailySpend,
    budget_forecasts,
    refresh_all,
    refresh_loop,
    spend_by_day,
    stored_forecast,
)
from spendgate.store.leases import LeaseLost, renew_lease, take_lease, while_held
from spendgate.store.ledger import LedgerEntry, LedgerWriter, Pending, store_batch
from spendgate.store.policies import PolicyStore, budget_from_row

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
#: March 2026 in UTC, as overrun events and stored forecasts name it (``Window.span``)
MARCH = "20260301T000000Z/20260401T000000Z"
USD = 1_000_000_000
MASTER = "sg-master-forecast-test"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id="org_1", name="acme", created_at=NOW))
    yield engine
    await engine.dispose()


def budget_values(
    budget_id: str,
    amount_usd: int,
    *,
    scope: tuple[str, str | None] = ("org", "org_1"),
    tz: str = "UTC",
    hard_limit: bool = False,
    models: list[str] | None = None,
    period: str = "monthly",
) -> dict[str, Any]:
    return {
        "id": budget_id,
        "org_id": "org_1",
        "name": budget_id,
        "scope_type": scope[0],
        "scope_id": scope[1],
        "tag": None,
        "period": period,
        "timezone": tz,
        "week_start": "monday",
        "amount_nanos": amount_usd * USD,
        "alert_percentages": ["50", "75", "90"],
        "soft_limit_percent": "75",
        "hard_limit": hard_limit,
        "hard_limit_percent": "100",
        "categories": {"models": models or []},
        "created_at": NOW,
        "updated_at": NOW,
    }


async def add_budget(engine: AsyncEngine, budget_id: str, amount_usd: int, **kw: Any) -> Budget:
    values = budget_values(budget_id, amount_usd, **kw)
    async with engine.begin() as conn:
        await conn.execute(schema.budgets.insert().values(**values))
    return budget_from_row(values)


@dataclass
class Spend:
    at: datetime
    usd: float | None
    team: str | None = None
    model: str = "gpt-4o"


def _entry(n: int, r: Spend) -> LedgerEntry:
    cost = None if r.usd is None else int(r.usd * USD)
    return LedgerEntry(
        f"req_{n:06d}", "org_1", r.team, None, None, "key_1", [], "openai", r.model, r.model,
        "chat", False, "ok", 200, 1, 1, 0, 0, 0, cost, cost is None, False, 1, r.at, r.at,
    )  # fmt: skip


async def add_spend(engine: AsyncEngine, *rows: Spend) -> None:
    """Calls as the ledger writer stores them (with their rollups, which forecasts read)."""
    async with engine.begin() as conn:
        count = (
            await conn.execute(sa.select(sa.func.count()).select_from(schema.ledger))
        ).scalar_one()
        await store_batch(conn, [Pending(_entry(count + i, r)) for i, r in enumerate(rows)])


async def history_of(engine: AsyncEngine, budget: Budget) -> Any:
    start = NOW - timedelta(days=90)
    ledger = await spend_by_day(engine, start, NOW + timedelta(seconds=1), [budget.timezone])
    return DailySpend(ledger, NOW).history(budget)


async def test_days_are_local_days_in_the_budget_zone(engine: AsyncEngine) -> None:
    """Kolkata is UTC+5:30: 18:15Z is still 9 March there, 18:45Z is already 10 March."""
    await add_spend(
        engine,
        Spend(datetime(2026, 3, 9, 18, 15, tzinfo=UTC), 1),
        Spend(datetime(2026, 3, 9, 18, 45, tzinfo=UTC), 2),
        Spend(datetime(2026, 3, 10, 6, 0, tzinfo=UTC), 4),
    )
    kolkata = await add_budget(engine, "b_in", 100, tz="Asia/Kolkata")
    utc = await add_budget(engine, "b_utc", 100)
    local = await history_of(engine, kolkata)
    assert (local.today, local.daily[-1], local.today_spent) == (
        date(2026, 3, 10),
        1 * USD,
        6 * USD,
    )
    assert local.today_elapsed == pytest.approx(17.5 / 24)
    plain = await history_of(engine, utc)
    assert (plain.daily[-1], plain.today_spent, plain.today_elapsed) == (3 * USD, 4 * USD, 0.5)


async def test_a_budget_counts_only_the_spend_it_applies_to(engine: AsyncEngine) -> None:
    """Team scope and model categories as in enforcement; unpriced calls never count."""
    day = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)
    await add_spend(
        engine,
        Spend(day, 1, team="team_a"),
        Spend(day, 2, team="team_b"),
        Spend(day, 4, team="team_a", model="gpt-4o-mini"),
        Spend(day, None, "team_a"),
    )
    async with engine.begin() as conn:
        await conn.execute(
            schema.teams.insert(),
            [
                {"id": t, "org_id": "org_1", "name": t, "created_at": NOW}
                for t in ("team_a", "team_b")
            ],
        )
    team = await add_budget(engine, "b_team", 100, scope=("team", "team_a"))
    minis = await add_budget(engine, "b_mini", 100, models=["gpt-4o-mini*"])
    whole = await add_budget(engine, "b_org", 100)
    assert (await history_of(engine, team)).daily[-1] == 5 * USD
    assert (await history_of(engine, minis)).daily[-1] == 4 * USD
    assert (await history_of(engine, whole)).daily[-1] == 7 * USD


async def climbing_overrun(
    engine: AsyncEngine, database_url: str, escalation: tuple[int, ...]
) -> list[dict[str, int]]:
    """$10 a day against $290, refreshed twice at each step (the second time by another
    engine, as a restarted or second replica would), while P50 climbs: $305 (105 %), $60
    more today → $365 (126 %), $160 more → $525 (181 %). What each refresh announced."""
    budget = await add_budget(engine, "b_1", 290)
    await add_spend(engine, *(Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)))
    other = create_engine(database_url)
    announced: list[dict[str, int]] = []
    try:
        for more in (0, 60, 160):
            if more:
                await add_spend(engine, Spend(NOW - timedelta(hours=1), more))
            for e in (engine, other):
                done = await refresh_all(e, [budget], NOW, escalation=escalation)
                announced.append(done.announced)
    finally:
        await other.dispose()
    forecast = done.forecasts["b_1"]
    assert (forecast.method, forecast.history_days, forecast.p50_nanos) == (
        "seasonal_naive",
        9,
        525 * USD,
    )
    return announced


async def test_overrun_fires_once_per_period_by_default(
    engine: AsyncEngine, database_url: str
) -> None:
    """SPEC §5: P50 climbing from 105 % to 181 % of the limit over the period is one
    budget.forecast_overrun, the first time P50 lands above the limit; no refresh after
    (on this engine or another) announces again."""
    announced = await climbing_overrun(engine, database_url, ())
    assert announced == [{"b_1": 100}, {}, {}, {}, {}, {}]
    events = await list_events(engine, type_="budget.forecast_overrun")
    assert [(e["dedup_key"], e["data"]["p50_usd"]) for e in events] == [
        (f"forecast:b_1:{MARCH}:100", "305.00")
    ]
    row = await stored_forecast(engine, "b_1")
    assert row is not None and (row["overrun_band"], row["period_key"]) == (100, MARCH)


async def test_overrun_escalation_fires_once_per_configured_band(
    engine: AsyncEngine, database_url: str
) -> None:
    """With ``forecast_overrun_escalation = [110, 125, 150, 200]`` the same climb is
    announced at 100, then at the highest band passed since (125: 110 was passed in the
    same step, 150), each once; 200 is never reached."""
    announced = await climbing_overrun(engine, database_url, (110, 125, 150, 200))
    assert announced == [{"b_1": 100}, {}, {"b_1": 125}, {}, {"b_1": 150}, {}]
    events = await list_events(engine, type_="budget.forecast_overrun")
    assert sorted((e["dedup_key"], e["data"]["p50_usd"]) for e in events) == [
        (f"forecast:b_1:{MARCH}:100", "305.00"),
        (f"forecast:b_1:{MARCH}:125", "365.00"),
        (f"forecast:b_1:{MARCH}:150", "525.00"),
    ]
    row = await stored_forecast(engine, "b_1")
    assert row is not None and (row["overrun_band"], row["period_key"]) == (150, MARCH)


async def test_many_budgets_refresh_in_batches_and_rows_go_with_their_budget(
    engine: AsyncEngine,
) -> None:
    """More budgets than one IN list holds; deleting a budget deletes its forecast."""
    rows = [budget_values(f"b_{i:04d}", 100) for i in range(520)]
    async with engine.begin() as conn:
        await conn.execute(schema.budgets.insert(), rows)
    budgets = [budget_from_row(r) for r in rows]
    await add_spend(engine, Spend(NOW - timedelta(days=1), 3))
    done = await refresh_all(engine, budgets, NOW)
    assert len(done.forecasts) == 520
    assert {f.method for f in done.forecasts.values()} == {"trailing_mean"}
    async with engine.begin() as conn:
        await conn.execute(schema.budgets.delete().where(schema.budgets.c.id == "b_0000"))
    assert await stored_forecast(engine, "b_0000") is None
    assert await stored_forecast(engine, "b_0001") is not None


@asynccontextmanager
async def forecast_api(
    engine: AsyncEngine, escalation: tuple[int, ...] = ()
) -> AsyncIterator[tuple[httpx.AsyncClient, SimpleNamespace]]:
    """The forecast router on an admin app of its own (and its services), as the master key."""
    clock, policies, ledger = FrozenClock(NOW), PolicyStore(engine), LedgerWriter(engine)
    svc = SimpleNamespace(
        settings=SimpleNamespace(master_key=MASTER, forecast_overrun_escalation=escalation),
        clock=clock,
        engine=engine,
        policies=policies,
        ledger=ledger,
        # the real enforcer on memory counters: the routes read budgets' spend from it
        enforcer=Enforcer(
            policies, MemoryCounters(), ledger, clock, lambda *event: None, reservation_seconds=60
        ),
        auth_throttle=AuthThrottle(),
    )
    api = FastAPI()
    api.state.services = cast(Services, svc)

    @api.exception_handler(SpendgateError)
    async def spendgate_error(_: Request, exc: SpendgateError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": exc.message, "code": exc.code}}, status_code=exc.status
        )

    api.include_router(forecasts_router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api),
        base_url="http://t",
        headers={"authorization": f"Bearer {MASTER}"},
    ) as client:
        yield client, svc


async def test_forecast_routes(engine: AsyncEngine) -> None:
    """The router on the admin app: stored or computed on demand, money as strings."""
    budget = await add_budget(engine, "b_1", 200, hard_limit=True)
    await add_spend(engine, *(Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)))
    async with forecast_api(engine) as (client, svc):
        body = (await client.get(f"/admin/forecasts/{budget.id}")).json()
        # $10 a day toward $305 by P50, but the hard cap stops recorded spend at $200
        assert body["uncapped_p50_usd"] == "305.00" and body["spent_usd"] == "90.00"
        assert body["p50_usd"] == body["p90_usd"] == body["hard_cap_usd"] == "200.00"
        assert body["limit_usd"] == "200.00" and body["overrun_band"] == 100
        assert body["crossings"]["alert:50"] == "2026-03-11"
        assert body["crossings"]["hard:100"] == body["hits_hard_cap_on"] == "2026-03-21"
        assert body["method"] == "seasonal_naive" and body["percent_of_budget"] == "100.00"
        assert body["outlook"].startswith("will hit the hard cap ($200.00) on 2026-03-21")
        svc.clock.advance(60)
        again = (await client.get(f"/admin/forecasts/{budget.id}")).json()
        assert again["generated_at"] == body["generated_at"]
        fresh = await client.get(f"/admin/forecasts/{budget.id}", params={"refresh": "true"})
        assert fresh.json()["generated_at"] != body["generated_at"]
        assert (await client.get("/admin/forecasts/nope")).status_code == 404
        refreshed = (await client.post("/admin/forecasts/refresh")).json()
        assert refreshed["refreshed"] == 1 and refreshed["overruns_announced"] == 0
        assert (
            await client.get("/admin/forecasts/b_1", headers={"authorization": ""})
        ).status_code == 401


@pytest.mark.parametrize(("escalation", "band"), [((), 100), ((110, 125, 150, 200), 125)])
async def test_the_forecast_routes_announce_with_the_configured_escalation(
    engine: AsyncEngine, escalation: tuple[int, ...], band: int
) -> None:
    """Both routes that refresh (a budget's forecast on demand, and every budget's) use
    ``forecast_overrun_escalation``: P50 $365 against $290 (126 %) is band 100 by default,
    125 with the bands; one event per budget, and the field says which band."""
    first = await add_budget(engine, "b_1", 290)
    await add_budget(engine, "b_2", 290)
    await add_spend(
        engine,
        *(Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)),
        Spend(NOW - timedelta(hours=1), 60),
    )
    async with forecast_api(engine, escalation) as (client, _):
        body = (await client.get(f"/admin/forecasts/{first.id}")).json()
        assert (body["p50_usd"], body["overrun_band"]) == ("365.00", band)
        refreshed = (await client.post("/admin/forecasts/refresh")).json()
        assert (refreshed["refreshed"], refreshed["overruns_announced"]) == (2, 1)
        assert (await client.get("/admin/forecasts/b_2")).json()["overrun_band"] == band
    events = await list_events(engine, type_="budget.forecast_overrun")
    assert sorted((e["data"]["budget_id"], e["data"]["band_percent"]) for e in events) == [
        ("b_1", band),
        ("b_2", band),
    ]


async def test_replicas_refreshing_at_once_both_succeed(
    engine: AsyncEngine, database_url: str
) -> None:
    """Two gateway processes (each its own engine) refreshing the same budgets at the same
    moment, as a scheduled refresh on one and an on-demand one on the other can: both
    succeed, one row per budget stays, and each overrun band is announced once."""
    rows = [budget_values(f"b_{i:03d}", 50) for i in range(60)]
    async with engine.begin() as conn:
        await conn.execute(schema.budgets.insert(), rows)
    budgets = [budget_from_row(r) for r in rows]
    await add_spend(engine, *(Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)))
    other = create_engine(database_url)
    try:
        for _ in range(8):
            await asyncio.gather(
                refresh_all(engine, budgets, NOW), refresh_all(other, budgets, NOW)
            )
    finally:
        await other.dispose()
    async with engine.connect() as conn:
        stored = (
            await conn.execute(sa.select(sa.func.count()).select_from(budget_forecasts))
        ).scalar_one()
    assert stored == 60
    events = await list_events(engine, type_="budget.forecast_overrun", limit=1000)
    assert len(events) == 60


async def test_a_lease_goes_to_one_replica_until_it_runs_out(
    engine: AsyncEngine, database_url: str
) -> None:
    """Eight replicas asking at once: one gets the lease. Nobody else (nor the holder) gets
    it again before it runs out; after that, the first to ask does."""
    ttl = timedelta(minutes=12)
    replicas = [create_engine(database_url) for _ in range(8)]
    try:
        won = await asyncio.gather(
            *(take_lease(e, "job", f"r{i}", NOW, ttl) for i, e in enumerate(replicas))
        )
        assert sum(won) == 1
        later = NOW + ttl - timedelta(seconds=1)
        assert not any(
            await asyncio.gather(
                *(take_lease(e, "job", f"r{i}", later, ttl) for i, e in enumerate(replicas))
            )
        )
        expired = NOW + ttl
        won = await asyncio.gather(
            *(take_lease(e, "job", f"r{i}", expired, ttl) for i, e in enumerate(replicas))
        )
        assert sum(won) == 1
        assert await take_lease(engine, "other-job", "r0", NOW, ttl)
        # a replica whose clock runs a day ahead takes it until then; the others, on time,
        # treat a lease longer than any could be as expired
        ahead = expired + timedelta(days=1)
        assert await take_lease(engine, "job", "fast", ahead, ttl)
        assert await take_lease(engine, "job", "on-time", expired + timedelta(minutes=1), ttl)
    finally:
        for e in replicas:
            await e.dispose()


async def test_the_scheduled_refresh_runs_on_one_replica_per_interval(
    engine: AsyncEngine, database_url: str
) -> None:
    """Two replicas' refresh loops on one database: each interval's refresh happens once,
    on whichever replica takes the lease."""
    await add_budget(engine, "b_1", 100)
    clock = FrozenClock(NOW)
    policies = PolicyStore(engine)
    refreshed: list[str] = []

    def counting(replica: str) -> Any:
        async def snapshot(now: datetime) -> Any:
            refreshed.append(replica)
            return await policies.snapshot(now)

        return snapshot

    other = create_engine(database_url)
    loops = [
        asyncio.create_task(refresh_loop(e, counting(name), clock, 0.05, holder=name))
        for e, name in ((engine, "a"), (other, "b"))
    ]

    async def settled(count: int) -> None:
        """Wait for ``count`` refreshes, then ten more intervals for any refresh too many
        to show."""
        deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
        while len(refreshed) < count:
            assert time.monotonic() < deadline, refreshed
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    try:
        await settled(1)  # intervals of real time pass, but none of the frozen clock
        assert len(refreshed) == 1
        clock.advance(0.05)  # one interval later: the lease (0.8 of one) has run out
        await settled(2)
        assert len(refreshed) == 2
        assert await stored_forecast(engine, "b_1") is not None
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await other.dispose()


async def test_a_replica_whose_now_is_behind_the_holders_does_not_take_the_lease(
    engine: AsyncEngine, database_url: str
) -> None:
    """The flake of the loop test above, step by step: replica b read ``now`` (the frozen
    clock) just before the clock moved on an interval, and asked for the lease only after a
    had taken it at the new time. A lease running out later than b's ``now + ttl`` looked
    like a fast clock's and b took it too: two refreshes in one interval (then a third, as
    b's shorter lease ran out early). Only a lease past ``now + ttl + skew`` is a fast
    clock's."""
    ttl = timedelta(seconds=0.04)
    other = create_engine(database_url)
    try:
        assert await take_lease(engine, "forecasts", "a", NOW, ttl)
        later = NOW + timedelta(seconds=0.05)  # one interval on: a's lease has run out
        assert await take_lease(engine, "forecasts", "a", later, ttl)
        assert not await take_lease(other, "forecasts", "b", NOW, ttl)  # b's stale now
        assert not await take_lease(other, "forecasts", "b", later - timedelta(seconds=0.003), ttl)
        assert not await take_lease(other, "forecasts", "b", later, ttl)
        assert await take_lease(other, "forecasts", "b", later + ttl, ttl)
    finally:
        await other.dispose()


async def test_a_holder_slower_than_its_lease_keeps_it_by_renewing(
    engine: AsyncEngine, database_url: str
) -> None:
    """A refresh running longer than its lease renews it: the next replica to wake finds it
    held and does not start a second refresh beside the first. A holder that stops renewing
    (it died) loses it a ``ttl`` after its last renewal; its renewal then fails."""
    ttl = timedelta(minutes=12)
    other = create_engine(database_url)
    try:
        assert await take_lease(engine, "job", "a", NOW, ttl)
        assert await renew_lease(engine, "job", "a", NOW + ttl * 0.9, ttl)
        assert not await take_lease(other, "job", "b", NOW + ttl + timedelta(seconds=1), ttl)
        assert not await renew_lease(other, "job", "b", NOW + ttl, ttl)  # b never held it
        last = NOW + ttl * 0.9
        assert await take_lease(other, "job", "b", last + ttl, ttl)
        assert not await renew_lease(engine, "job", "a", last + ttl, ttl)
        # a renewal never shortens the lease (a renewer whose now is behind)
        assert await renew_lease(other, "job", "b", NOW, ttl)
        assert not await take_lease(engine, "job", "a", last + ttl + ttl / 2, ttl)
    finally:
        await other.dispose()


async def test_a_job_whose_lease_was_taken_is_stopped(
    engine: AsyncEngine, database_url: str
) -> None:
    """``while_held``: the job runs while its holder renews; once another replica holds
    the lease (a's renewals were refused: here a's clock never moves, b's is a lease
    later), a's next renewal fails, a's job is cancelled and ``LeaseLost`` raised."""
    ttl = timedelta(seconds=30)
    stopped = asyncio.Event()
    forever = asyncio.Event()

    async def job() -> None:
        try:
            await forever.wait()
        finally:
            stopped.set()

    assert await take_lease(engine, "job", "a", NOW, ttl)
    held = asyncio.create_task(
        while_held(engine, "job", "a", FrozenClock(NOW), ttl, job(), renew_every=0.01)
    )
    other = create_engine(database_url)
    try:
        assert await take_lease(other, "job", "b", NOW + ttl, ttl)
        with pytest.raises(LeaseLost):
            await held
        assert stopped.is_set()
        assert (
            await while_held(engine, "job", "a", FrozenClock(NOW), ttl, asyncio.sleep(0, 7), 1) == 7
        )
    finally:
        held.cancel()
        await other.dispose()


async def test_the_refresh_loop_asked_to_stop_ends_after_the_round_in_progress(
    engine: AsyncEngine,
) -> None:
    """Shutdown asks the loop to stop rather than cancelling it inside a database call
    (on SQLite such a task never ends: ``spendgate.stopping``): the refresh in progress
    finishes and stores its forecast, then the loop returns by itself."""
    await add_budget(engine, "b_1", 100)
    policies = PolicyStore(engine)
    started, release = asyncio.Event(), asyncio.Event()

    async def snapshot(now: datetime) -> Any:
        started.set()
        await release.wait()
        return await policies.snapshot(now)

    stop = Stop()
    loop = asyncio.create_task(
        refresh_loop(engine, snapshot, FrozenClock(NOW), 0.01, holder="a", stop=stop)
    )
    await started.wait()
    stop.set()
    release.set()
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        await loop
    assert not loop.cancelled()
    assert await stored_forecast(engine, "b_1") is not None


async def test_a_budget_deleted_during_a_refresh_does_not_fail_the_others(
    engine: AsyncEngine,
) -> None:
    """A budget in the refresh's snapshot but deleted before its forecast is stored (here:
    never stored at all) is skipped, with no overrun event; every other budget is stored."""
    kept = await add_budget(engine, "b_kept", 50)
    gone = budget_from_row(budget_values("b_gone", 50))
    await add_spend(engine, *(Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)))
    done = await refresh_all(engine, [gone, kept], NOW)
    assert done.announced == {"b_kept": 100}
    assert await stored_forecast(engine, "b_kept") is not None
    assert await stored_forecast(engine, "b_gone") is None
    events = await list_events(engine, type_="budget.forecast_overrun")
    assert [e["data"]["budget_id"] for e in events] == ["b_kept"]


async def test_a_budget_whose_figures_overflow_the_row_does_not_fail_the_others(
    engine: AsyncEngine,
) -> None:
    """A budget stored before the API bounded amounts (here $9e9 with a 130 % hard limit:
    its cap is past the 64-bit nanos column) cannot have its forecast stored; it is skipped
    with a warning, and every other budget's forecast, and overrun, is stored."""
    kept = await add_budget(engine, "b_kept", 50)
    values = budget_values("b_huge", 9_000_000_000, hard_limit=True)
    values["hard_limit_percent"] = "130"
    async with engine.begin() as conn:
        await conn.execute(schema.budgets.insert().values(**values))
    huge = budget_from_row(values)
    await add_spend(engine, *(Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)))
    done = await refresh_all(engine, [huge, kept], NOW)
    assert done.announced == {"b_kept": 100}
    assert await stored_forecast(engine, "b_kept") is not None
    assert await stored_forecast(engine, "b_huge") is None


async def move_zone(engine: AsyncEngine, budget_id: str, tz: str, at: datetime = NOW) -> Budget:
    """The budget's zone changed at ``at`` (as ``PATCH /admin/budgets/{id}`` stores it)."""
    async with engine.begin() as conn:
        await conn.execute(
            schema.budgets.update()
            .where(schema.budgets.c.id == budget_id)
            .values(timezone=tz, updated_at=at)
        )
        row = (
            await conn.execute(sa.select(schema.budgets).where(schema.budgets.c.id == budget_id))
        ).one()
    return budget_from_row(dict(row._mapping))


async def overruns(engine: AsyncEngine) -> list[tuple[str, str]]:
    """Each ``budget.forecast_overrun``'s (dedup key, period_key), in key order."""
    events = await list_events(engine, type_="budget.forecast_overrun")
    return sorted((e["dedup_key"], e["data"]["period_key"]) for e in events)


#: $10 a day from March 1 to 9 (09:00Z) against a daily $3: P50 is above it in any zone
TEN_A_DAY = [Spend(datetime(2026, 3, d, 9, tzinfo=UTC), 10) for d in range(1, 10)]


async def test_a_zone_moved_to_other_hours_under_the_same_date_announces_there_again(
    engine: AsyncEngine,
) -> None:
    """A daily UTC budget announces its overrun at 12:00Z on March 10; moved to
    America/Los_Angeles, its March 10 is [07:00Z, 07:00Z next day), a window of other
    hours under the same date: its overrun is announced there too (the stored forecast and
    the dedup key named the date, so it never was). Moved back to UTC, the UTC day's
    overrun was announced already: nothing again."""
    budget = await add_budget(engine, "b_1", 3, period="daily")
    await add_spend(engine, *TEN_A_DAY)
    assert (await refresh_all(engine, [budget], NOW)).announced == {"b_1": 100}
    moved = await move_zone(engine, "b_1", "America/Los_Angeles")
    assert (await refresh_all(engine, [moved], NOW)).announced == {"b_1": 100}
    assert (await refresh_all(engine, [moved], NOW)).announced == {}
    back = await move_zone(engine, "b_1", "UTC")
    assert (await refresh_all(engine, [back], NOW)).announced == {}
    assert await overruns(engine) == [
        ("forecast:b_1:20260310T000000Z/20260311T000000Z:100", "2026-03-10"),
        ("forecast:b_1:20260310T070000Z/20260311T070000Z:100", "2026-03-10"),
    ]


async def test_a_zone_moved_to_the_same_hours_under_another_date_announces_nothing_twice(
    engine: AsyncEngine,
) -> None:
    """Pacific/Honolulu's March 10 and Pacific/Kiritimati's March 11 are the same 24
    hours, [10:00Z, 10:00Z): a daily budget moved from one to the other keeps its window,
    and the overrun announced in it is not announced again (it was, under the new date)."""
    budget = await add_budget(engine, "b_1", 3, period="daily", tz="Pacific/Honolulu")
    await add_spend(engine, *TEN_A_DAY)
    assert (await refresh_all(engine, [budget], NOW)).announced == {"b_1": 100}
    moved = await move_zone(engine, "b_1", "Pacific/Kiritimati")
    done = await refresh_all(engine, [moved], NOW)
    assert done.announced == {} and done.forecasts["b_1"].period_key == "2026-03-11"
    assert await overruns(engine) == [
        ("forecast:b_1:20260310T100000Z/20260311T100000Z:100", "2026-03-10")
    ]
    row = await stored_forecast(engine, "b_1")
    assert row is not None and row["overrun_band"] == 100
    assert row["period_key"] == "20260310T100000Z/20260311T100000Z"


async def stored_as_before_the_upgrade(engine: AsyncEngine, budget_id: str, date_key: str) -> None:
    """The budget's stored forecast and overrun event as a release before this one left
    them: the row's ``period_key`` and the event's dedup key named the local date."""
    t = budget_forecasts
    async with engine.begin() as conn:
        await conn.execute(t.update().where(t.c.budget_id == budget_id).values(period_key=date_key))
        await conn.execute(
            schema.events.update()
            .where(schema.events.c.dedup_key.startswith(f"forecast:{budget_id}:"))
            .values(dedup_key=f"forecast:{budget_id}:{date_key}:100")
        )


async def test_an_overrun_announced_before_the_upgrade_holds_for_its_window_only(
    engine: AsyncEngine,
) -> None:
    """Two daily UTC budgets announced at 02:00Z on March 10, stored under the date as
    before the upgrade. At 12:00Z the one still in UTC is in the same window: nothing is
    announced again. The one moved to America/Los_Angeles is in a window (from 07:00Z)
    that began after its forecast was stored, so it is another: announced there."""
    early = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    kept = await add_budget(engine, "b_kept", 3, period="daily")
    await add_budget(engine, "b_moved", 3, period="daily")
    await add_spend(engine, *TEN_A_DAY)
    moved = budget_from_row(budget_values("b_moved", 3, period="daily"))
    assert (await refresh_all(engine, [kept, moved], early)).announced == {
        "b_kept": 100,
        "b_moved": 100,
    }
    for budget_id in ("b_kept", "b_moved"):
        await stored_as_before_the_upgrade(engine, budget_id, "2026-03-10")
    moved = await move_zone(engine, "b_moved", "America/Los_Angeles")
    assert (await refresh_all(engine, [kept, moved], NOW)).announced == {"b_moved": 100}
    assert await overruns(engine) == [
        ("forecast:b_kept:2026-03-10:100", "2026-03-10"),
        ("forecast:b_moved:2026-03-10:100", "2026-03-10"),
        ("forecast:b_moved:20260310T070000Z/20260311T070000Z:100", "2026-03-10"),
    ]
    row = await stored_forecast(engine, "b_kept")
    assert row is not None and row["overrun_band"] == 100
    assert row["period_key"] == "20260310T000000Z/20260311T000000Z"


async def test_a_stored_forecast_of_another_window_under_the_same_date_is_not_shown(
    engine: AsyncEngine,
) -> None:
    """$2 spent at 03:00Z on March 10 is in a daily UTC budget's day, not in Los Angeles'
    (from 07:00Z). Moved there, the forecast shown is of its new window, computed again:
    $0 spent (the UTC day's stored forecast was read as current, its date the same)."""
    budget = await add_budget(engine, "b_1", 100, period="daily")
    await add_spend(engine, *TEN_A_DAY, Spend(datetime(2026, 3, 10, 3, tzinfo=UTC), 2))
    async with forecast_api(engine) as (client, _):
        utc = (await client.get(f"/admin/forecasts/{budget.id}")).json()
        assert (utc["period_key"], utc["spent_usd"]) == ("2026-03-10", "2.00")
        await move_zone(engine, "b_1", "America/Los_Angeles")
        moved = (await client.get(f"/admin/forecasts/{budget.id}")).json()
        assert (moved["period_key"], moved["spent_usd"]) == ("2026-03-10", "0.00")


async def test_a_stored_forecast_of_the_same_window_in_another_zone_is_computed_again(
    engine: AsyncEngine,
) -> None:
    """Moved from Pacific/Honolulu to Pacific/Kiritimati, a daily budget keeps its window
    (its overrun is not announced again), but the forecast shown names the new zone's
    dates: computed again after the move, its 50 % is crossed on March 11, not 10."""
    budget = await add_budget(engine, "b_1", 12, period="daily", tz="Pacific/Honolulu")
    await add_spend(engine, *TEN_A_DAY)
    async with forecast_api(engine) as (client, svc):
        before = (await client.get(f"/admin/forecasts/{budget.id}")).json()
        assert (before["period_key"], before["crossings"]["alert:50"]) == (
            "2026-03-10",
            "2026-03-10",
        )
        svc.clock.advance(60)
        await move_zone(engine, "b_1", "Pacific/Kiritimati", svc.clock.now())
        after = (await client.get(f"/admin/forecasts/{budget.id}")).json()
        assert (after["period_key"], after["crossings"]["alert:50"]) == (
            "2026-03-11",
            "2026-03-11",
        )
        assert after["generated_at"] != before["generated_at"]


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("forecast_refresh_seconds = 60", True),
        ("forecast_workers = 0", True),
        ("forecast_refresh_seconds = 0", False),
        ("forecast_refresh_seconds = -5", False),
        ('forecast_refresh_seconds = "often"', False),
        ("forecast_workers = -1", False),
        ("forecast_overrun_escalation = []", True),
        ("forecast_overrun_escalation = [101, 10000]", True),
        ("forecast_overrun_escalation = [110, 125, 150, 200]", True),
        ("forecast_overrun_escalation = [100, 110]", False),
        ("forecast_overrun_escalation = [90]", False),
        ("forecast_overrun_escalation = [125, 110]", False),
        ("forecast_overrun_escalation = [110, 110]", False),
        ("forecast_overrun_escalation = [110.5]", False),
        ('forecast_overrun_escalation = ["110"]', False),
        ("forecast_overrun_escalation = [true]", False),
        ("forecast_overrun_escalation = [10001]", False),
        ("forecast_overrun_escalation = 110", False),
    ],
)
def test_forecast_settings_are_checked(tmp_path: Any, line: str, accepted: bool) -> None:
    """A refresh interval under a second (the loop would spin), a negative worker count, or
    overrun escalation bands that are not whole percentages above 100 (at most 10,000) in
    ascending order are a config error naming the setting, at start."""
    config = tmp_path / "c.toml"
    config.write_text(f"[gateway]\n{line}\n")
    if accepted:
        load_settings(config_path=str(config), env={})
        return
    with pytest.raises(ConfigError, match=line.split()[0]):
        load_settings(config_path=str(config), env={})


def test_overrun_escalation_is_off_unless_configured(tmp_path: Any) -> None:
    """No setting: no escalation bands (one warning a period); else the bands as given."""
    assert load_settings(env={}).forecast_overrun_escalation == ()
    config = tmp_path / "c.toml"
    config.write_text("[gateway]\nforecast_overrun_escalation = [110, 125, 150, 200]\n")
    loaded = load_settings(config_path=str(config), env={})
    assert loaded.forecast_overrun_escalation == (110, 125, 150, 200)
