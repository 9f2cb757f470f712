"""In-app notifications by preference and role, the daily digest, and the Slack and
PagerDuty channels end to end (trigger, then resolve when the budget period resets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.budget_rules import Threshold
from spendgate.core.budget_windows import window_at
from spendgate.core.clock import FrozenClock
from spendgate.guard.enforcement import Applied, threshold_event
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.directory import Directory
from spendgate.store.policies import budget_from_row
from spendgate.testing.fake_upstream import ServerHandle, serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks import notifications as notes
from spendgate.webhooks.matching import Preferences
from spendgate.webhooks.outbox import emit_event, resolve_incidents, resolve_reset_periods
from spendgate.webhooks.secrets_box import SecretBox
from spendgate.webhooks.store import EndpointSpec, WebhookStore, list_deliveries
from spendgate.webhooks.worker import DeliveryWorker

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
BOX = SecretBox("test-secret-key")


def budget_data(
    team_id: str, threshold: str, percent: str, budget_id: str = "bud_1"
) -> dict[str, Any]:
    return {
        "budget_id": budget_id,
        "scope_type": "team",
        "scope_id": team_id,
        "tag": None,
        "period": "2026-03",
        "period_start": "2026-03-01T00:00:00+00:00",
        "period_end": "2026-04-01T00:00:00+00:00",
        "threshold": threshold,
        "percent": percent,
        "percent_used": percent,
        "spent_usd": f"{percent}.00",
        "amount_usd": "100.00",
        "hard_limit": True,
        "refused": False,
    }


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def receivers() -> Iterator[list[ServerHandle]]:
    handles: list[ServerHandle] = []
    yield handles
    for handle in handles:
        handle.stop()


async def emit(
    engine: AsyncEngine, type_: str, data: dict[str, Any], now: datetime, org_id: str
) -> None:
    async with engine.begin() as conn:
        await emit_event(conn, type_, data, now, org_id=org_id)


async def test_notifications_follow_roles_preferences_and_digest(engine: AsyncEngine) -> None:
    """Org admins hear everything in the org, members their teams; type filters apply;
    low-severity events wait for one daily digest per user."""
    now = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
    d = Directory(engine)
    org = (await d.create_org("acme", now))["id"]
    team_a = (await d.create_team(org, "a", now))["id"]
    team_b = (await d.create_team(org, "b", now))["id"]
    users = {
        name: (await d.create_user(f"{name}@x.io", role, teams, org, now))["id"]
        for name, role, teams in [
            ("admin", "org_admin", []),
            ("alice", "member", [team_a]),
            ("bob", "member", [team_b]),
            ("carol", "member", [team_a]),
            ("dave", "org_admin", []),
        ]
    }
    await notes.put_preferences(engine, users["carol"], Preferences(event_types=("wallet.*",)), now)
    await notes.put_preferences(engine, users["dave"], Preferences(digest=True), now)

    await emit(engine, "budget.threshold_crossed", budget_data(team_a, "alert", "50"), now, org)
    await emit(
        engine,
        "budget.hard_limit_reached",
        budget_data(team_a, "hard", "100"),
        now + timedelta(minutes=1),
        org,
    )

    async def types(name: str) -> list[str]:
        return [n["type"] for n in await notes.list_notifications(engine, users[name])]

    assert await types("admin") == ["budget.hard_limit_reached", "budget.threshold_crossed"]
    assert await types("alice") == ["budget.hard_limit_reached", "budget.threshold_crossed"]
    assert await types("bob") == [] and await types("carol") == []
    assert await types("dave") == ["budget.hard_limit_reached"]  # the info one is queued

    [first, *_] = await notes.list_notifications(engine, users["admin"])
    assert "$100.00 of $100.00" in first["body"] and first["severity"] == "critical"
    assert first["link"] == "/usage/budgets/bud_1"  # the console's budget page

    assert await notes.build_daily_digests(engine, now + timedelta(hours=1)) == 0  # day not over
    tomorrow = now + timedelta(days=1)
    assert await notes.build_daily_digests(engine, tomorrow) == 1
    assert await notes.build_daily_digests(engine, tomorrow) == 0
    [digest, hard] = await notes.list_notifications(engine, users["dave"])
    assert digest["type"] == "digest.daily" and digest["data"]["count"] == 1
    assert digest["data"]["items"][0]["type"] == "budget.threshold_crossed"

    read = await notes.mark_read(engine, hard["id"], tomorrow, users["dave"])
    assert read["read"] is True
    assert [
        n["id"] for n in await notes.list_notifications(engine, users["dave"], unread_only=True)
    ] == [digest["id"]]
    assert await notes.mark_all_read(engine, users["dave"], tomorrow) == 1
    assert await notes.list_notifications(engine, users["dave"], unread_only=True) == []


async def test_user_preference_routes_events_to_an_endpoint(
    engine: AsyncEngine, receivers: list[ServerHandle]
) -> None:
    """A user's chosen webhook channel (an endpoint of their org, which they manage as its
    org admin) gets what they want, once, even beyond the endpoint's own subscription."""
    now = datetime.now(UTC)
    d = Directory(engine)
    org = (await d.create_org("acme", now))["id"]
    team = (await d.create_team(org, "a", now))["id"]
    user = (await d.create_user("u@x.io", "org_admin", [], org, now))["id"]
    receiver = Receiver()
    receivers.append(serve_in_thread(receiver))
    store = WebhookStore(engine, BOX, allow_private=True)
    endpoint, _ = await store.create(
        EndpointSpec(url=receivers[0].url, event_types=("key.*",), scope_type="org", scope_id=org),
        now,
    )
    await notes.put_preferences(
        engine,
        user,
        Preferences(
            event_types=("budget.*",), in_app=False, webhook_endpoint_ids=(endpoint["id"],)
        ),
        now,
    )
    await emit(engine, "budget.soft_limit_reached", budget_data(team, "soft", "80"), now, org)
    await emit(engine, "wallet.depleted", {"wallet_id": "w"}, now, org)
    assert [x["event_type"] for x in await list_deliveries(engine, endpoint["id"])] == [
        "budget.soft_limit_reached"
    ]
    assert await notes.list_notifications(engine, user) == []


async def test_slack_and_pagerduty_trigger_then_resolve_on_reset(
    engine: AsyncEngine, receivers: list[ServerHandle]
) -> None:
    """Slack gets a readable message; PagerDuty a trigger with a dedup key and, once the
    budget's period has moved on, a resolve for the same key."""
    clock = FrozenClock(datetime(2026, 3, 20, 9, 0, tzinfo=UTC))
    now = clock.now()
    org = (await Directory(engine).create_org("acme", now))["id"]
    await org_budget(
        engine, org, "bud_1", now, name="ml monthly", period="monthly", hard_limit=True
    )
    slack, pager = Receiver(), Receiver()
    for app in (slack, pager):
        receivers.append(serve_in_thread(app))
    store = WebhookStore(engine, BOX, allow_private=True)
    await store.create(EndpointSpec(url=receivers[0].url, kind="slack"), now)
    pd, _ = await store.create(pagerduty(receivers[1].url), now)
    assert pd["config"] == {"routing_key": "…GKEY"}
    data = {**budget_data(org, "hard", "100"), "scope_type": "org"}
    await emit(engine, "budget.hard_limit_reached", data, now, org)
    async with DeliveryWorker(
        engine, clock, BOX, allow_private=True, console_url="https://spend.example.com"
    ) as worker:
        assert await worker.run_once() == 2
        [message] = [r.json() for r in slack.received]
        assert "Budget hard limit reached" in message["text"]
        assert "$100.00 of $100.00" in message["text"] and message["blocks"]
        [trigger] = [r.json() for r in pager.received]
        assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "R0UT1NGKEY"
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["dedup_key"] == "spendgate:budget:bud_1:2026-03:hard:100"

        async with engine.begin() as conn:
            assert await resolve_incidents(conn, {"bud_1": "2026-03"}, now) == 0  # same period
        assert await resolve_reset_periods(engine, now) == 0
        clock.set(datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC))  # the monthly budget resets
        assert await resolve_reset_periods(engine, clock.now()) == 1
        assert await resolve_reset_periods(engine, clock.now()) == 0
        assert await worker.run_once() == 1
    resolve = pager.received[-1].json()
    assert resolve == {
        "routing_key": "R0UT1NGKEY",
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }


def pagerduty(url: str) -> EndpointSpec:
    """A PagerDuty endpoint of budget events at ``url``."""
    return EndpointSpec(
        url=url, kind="pagerduty", event_types=("budget.*",), config={"routing_key": "R0UT1NGKEY"}
    )


async def org_budget(
    engine: AsyncEngine,
    org: str,
    budget_id: str,
    now: datetime,
    *,
    name: str | None = None,
    period: str = "daily",
    tz: str = "UTC",
    hard_limit: bool = False,
) -> None:
    """An org budget of $100 (alerts at 50 %, soft limit at 80 %) stored as of ``now``."""
    async with engine.begin() as conn:
        await conn.execute(
            schema.budgets.insert().values(
                id=budget_id,
                org_id=org,
                name=name or budget_id,
                scope_type="org",
                scope_id=org,
                tag=None,
                period=period,
                timezone=tz,
                week_start="monday",
                amount_nanos=100 * 10**9,
                alert_percentages=["50"],
                soft_limit_percent="80",
                hard_limit=hard_limit,
                hard_limit_percent="100",
                categories={},
                created_at=now,
                updated_at=now,
            )
        )


async def move_zone(engine: AsyncEngine, budget_id: str, tz: str) -> None:
    budgets = schema.budgets
    async with engine.begin() as conn:
        await conn.execute(budgets.update().where(budgets.c.id == budget_id).values(timezone=tz))


async def cross_half(engine: AsyncEngine, budget_id: str, now: datetime) -> None:
    """The budget's 50 % alert in its window at ``now``, as the enforcer records it."""
    budgets = schema.budgets
    async with engine.begin() as conn:
        row = (await conn.execute(sa.select(budgets).where(budgets.c.id == budget_id))).one()
        budget = budget_from_row(dict(row._mapping))
        window = window_at(now, budget.period, budget.timezone, budget.week_start)
        applied = Applied(budget, window, budget.amount_nanos, None)
        type_, key, data = threshold_event(applied, Threshold("alert", Decimal(50)), 50 * 10**9)
        await emit_event(conn, type_, data, now, org_id=budget.org_id, dedup_key=key)


async def test_a_pagerduty_incident_is_of_one_window_through_zone_moves(
    engine: AsyncEngine, receivers: list[ServerHandle]
) -> None:
    """Two daily budgets reach 50 % at 15:30Z on March 10: one in UTC, moved to
    America/Los_Angeles (same date, other hours: a new window), one in Pacific/Honolulu,
    moved to Pacific/Kiritimati (same hours, another date). The housekeeping resolves the
    first's incident and keeps the second's; the first's 50 % in its new window opens an
    incident of its own. (Keyed by the date, the first's new 50 % went to the incident of
    the UTC day, left open, and the second's was resolved while its window went on.)"""
    clock = FrozenClock(datetime(2026, 3, 10, 15, 30, tzinfo=UTC))
    now = clock.now()
    org = (await Directory(engine).create_org("acme", now))["id"]
    made = datetime(2026, 3, 10, tzinfo=UTC)
    await org_budget(engine, org, "bud_moved", made)
    await org_budget(engine, org, "bud_same", made, tz="Pacific/Honolulu")
    pager = Receiver()
    receivers.append(serve_in_thread(pager))
    await WebhookStore(engine, BOX, allow_private=True).create(pagerduty(receivers[0].url), now)
    for budget_id in ("bud_moved", "bud_same"):
        await cross_half(engine, budget_id, now)
    async with DeliveryWorker(
        engine, clock, BOX, allow_private=True, console_url="https://spend.example.com"
    ) as worker:
        assert await worker.run_once() == 2
        first = {
            b["payload"]["custom_details"]["budget_id"]: b["dedup_key"]
            for b in (r.json() for r in pager.received)
        }
        assert first == {
            "bud_moved": "spendgate:budget:bud_moved:20260310T000000Z/20260311T000000Z:alert:50",
            "bud_same": "spendgate:budget:bud_same:20260310T100000Z/20260311T100000Z:alert:50",
        }
        await move_zone(engine, "bud_moved", "America/Los_Angeles")
        await move_zone(engine, "bud_same", "Pacific/Kiritimati")
        assert await resolve_reset_periods(engine, now) == 1
        await cross_half(engine, "bud_moved", now)
        await cross_half(engine, "bud_same", now)  # fired in this window already: nothing
        assert await worker.run_once() == 2
    sent = [(b["event_action"], b["dedup_key"]) for b in (r.json() for r in pager.received[2:])]
    assert sorted(sent) == [
        ("resolve", first["bud_moved"]),
        ("trigger", "spendgate:budget:bud_moved:20260310T070000Z/20260311T070000Z:alert:50"),
    ]
