"""Budgets' spend per local day is summed by the database from the wide rollup's whole
15-minute buckets and the ledger's part buckets at either end (``forecasts.spend_by_day``):
for budgets of every scope and category kind, in zones with DST (a half-hour one too) and
half- and quarter-hour offsets, the days and the forecasts' daily history equal the
calls themselves and a scan of the ledger alone, to the nano, on SQLite and PostgreSQL,
with calls on the very edges of the window, of local days and past the window's end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.core.showback import local_day
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.forecasts import HISTORY_DAYS, DailySpend, LedgerDays, spend_by_day
from spendgate.store.ledger import LedgerEntry, Pending, store_batch

ORG = "org_1"
#: not on a 15-minute bucket at either end: both ends are part buckets
START = datetime(2026, 3, 6, 10, 7, 30, tzinfo=UTC)
END = datetime(2026, 4, 6, 15, 52, 30, tzinfo=UTC)
#: New York (8 March), Berlin and Paris (29 March, the same offsets: one column) change
#: to summer time, Lord Howe back half an hour (5 April); Kolkata +5:30, Kathmandu +5:45
ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
]
TEAMS = ["team_a", "team_b", None]
USERS = ["user_a", None]
AGENTS = [None, "agent_a"]
KEYS = ["key_a", "key_b", "key_c"]
TAG_SETS = [[], ["search"], ["batch", "search"], ["search", "batch", "search"], ["eval"]]
ROUTES = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("azure", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"),
]
KINDS = ["chat", "embeddings", "responses"]


def _times() -> list[datetime]:
    """Every 97 min 13 s over the window and an hour either side; a microsecond before
    and on every local midnight of each zone (a local day's first bucket, SQLite's
    rounding to the millisecond); on and around the window's edges (the end is
    exclusive) and a bucket bound; one after the end, in its bucket."""
    times, at = [], START - timedelta(hours=1)
    while at < END + timedelta(hours=1):
        times.append(at)
        at += timedelta(minutes=97, seconds=13)
    for tz in ZONES:
        day = START.date()
        while day <= END.date():
            midnight = datetime.combine(day, time(), ZoneInfo(tz)).astimezone(UTC)
            times += [midnight - timedelta(microseconds=1), midnight]
            day += timedelta(days=1)
    for edge in (START, END, datetime(2026, 3, 6, 10, 15, tzinfo=UTC)):
        times += [edge - timedelta(microseconds=1), edge, edge + timedelta(microseconds=1)]
    times.append(datetime(2026, 4, 6, 15, 59, 59, tzinfo=UTC))  # after END, in its bucket
    return times


def _calls() -> list[LedgerEntry]:
    calls = []
    for n, at in enumerate(_times()):
        provider, model = ROUTES[n % 4]
        unknown = n % 17 == 0
        calls.append(
            LedgerEntry(
                f"req_{n:05d}", ORG, TEAMS[n % 3], USERS[n % 2], AGENTS[(n // 2) % 2],
                KEYS[(n // 3) % 3], TAG_SETS[(n // 5) % 5], provider, model, model,
                KINDS[(n // 7) % 3], False, "error" if n % 11 == 0 else "ok", 200, 10, 5, 0,
                0, 0, None if unknown else 999_999_937 * (n % 13) + n, unknown, False, 1,
                at, at,
            )
        )  # fmt: skip
    return calls


CALLS = _calls()
#: each call's subject, and its local date in each zone
SUBJECTS = [
    rules.Subject(
        ORG, c.team_id, c.user_id, c.agent_id, c.key_id, tuple(c.tags), c.provider, c.model,
        c.kind,
    )
    for c in CALLS
]  # fmt: skip
LOCAL_DATES = {tz: [c.started_at.astimezone(ZoneInfo(tz)).date() for c in CALLS] for tz in ZONES}


def _budget(scope_type: str, scope_id: str | None, **categories: list[str]) -> rules.Budget:
    return rules.Budget(
        id=f"b_{scope_type}_{sorted(categories.items())}",
        org_id=ORG,
        scope_type=scope_type,
        scope_id=None if scope_type == "tag" else scope_id,
        tag=scope_id if scope_type == "tag" else None,
        period="monthly",
        timezone="UTC",
        week_start="monday",
        amount_nanos=10**12,
        categories=rules.Categories(**{k: tuple(v) for k, v in categories.items()}),
    )


BUDGETS = [
    _budget(scope, scope_id, **categories)
    for scope, scope_id in [
        ("team", "team_a"),
        ("org", ORG),
        ("tag", "batch"),
        ("key", "key_b"),
        ("user", "user_a"),
        ("agent", "agent_a"),
    ]
    for categories in [
        {"providers": ["azure"]},
        {"models": ["gpt-4o"]},
        {"models": ["gpt-4o*"]},
        {"kinds": ["chat", "responses"]},
        {"tags": ["search"]},
        {"models": ["gpt-4o*", "claude-*"], "tags": ["search", "eval"], "kinds": ["chat"]},
        {},
    ]
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id=ORG, name="acme", created_at=START))
        await store_batch(conn, [Pending(c) for c in CALLS])
    yield engine
    await engine.dispose()


def _truth(budget: rules.Budget, tz: str, start: datetime, end: datetime) -> dict[date, int]:
    """The budget's spend per local day of ``tz``, from the calls themselves."""
    out: dict[date, int] = {}
    for c, subject, day in zip(CALLS, SUBJECTS, LOCAL_DATES[tz], strict=True):
        if start <= c.started_at < end and c.cost_nanos and rules.applies(budget, subject):
            out[day] = out.get(day, 0) + c.cost_nanos
    return out


def _days(budget: rules.Budget, tz: str, found: LedgerDays) -> dict[date, int]:
    """The budget's spend per local day of ``tz`` (``budget_rules.applies`` on each
    subject)."""
    out: dict[date, int] = {}
    for subject, days, costs in found.by_org.get(ORG, []):
        if rules.applies(budget, subject):
            for day, cost in zip(days[found.row[tz]].tolist(), costs.tolist(), strict=True):
                out[local_day(day)] = out.get(local_day(day), 0) + cost
    return {d: v for d, v in out.items() if v}


async def test_days_equal_the_calls_and_the_ledger_for_every_scope_category_and_zone(
    engine: AsyncEngine,
) -> None:
    assert len({row for row in (await spend_by_day(engine, START, END, ZONES)).row.values()}) == 6
    counted = 0
    for narrow in {rules.scope_field(b) for b in BUDGETS}:  # each scope read once
        stored = await spend_by_day(engine, START, END, ZONES, [ORG], narrow)
        ledger = await spend_by_day(engine, START, END, ZONES, [ORG], narrow, rollup=False)
        for budget in (b for b in BUDGETS if rules.scope_field(b) == narrow):
            for tz in ZONES:
                truth = _truth(budget, tz, START, END)
                assert _days(budget, tz, ledger) == truth, (budget, tz)
                assert _days(budget, tz, stored) == truth, (budget, tz)
                counted += len(truth) > 20
    assert counted == len(BUDGETS) * len(ZONES)  # every budget counts calls on most days


@pytest.mark.parametrize("now", [END, END - timedelta(hours=7, minutes=45)])
async def test_the_daily_history_equals_the_ledgers_in_every_zone(
    engine: AsyncEngine, now: datetime
) -> None:
    """What ``refresh_all`` forecasts from: each complete local day of the lookback and
    today so far, read as it reads them, equal to the same read of the ledger alone and
    to the calls (``now`` on a part bucket: today's last bucket is the ledger's)."""
    start, end = now - timedelta(days=HISTORY_DAYS + 2), now + timedelta(seconds=1)
    whole = await spend_by_day(engine, start, end, ZONES, [ORG])
    ledger = DailySpend(await spend_by_day(engine, start, end, ZONES, [ORG], rollup=False), now)
    stored = DailySpend(whole, now)
    for base in BUDGETS:
        for tz in ZONES:
            budget = replace(base, timezone=tz)
            history = stored.history(budget)
            assert history == ledger.history(budget), (budget, tz)
            truth = _truth(budget, tz, start, end)
            first = history.today - timedelta(days=HISTORY_DAYS)
            assert history.daily == tuple(
                truth.get(first + timedelta(days=i), 0) for i in range(HISTORY_DAYS)
            ), (budget, tz)
            assert history.today_spent == truth.get(history.today, 0)
            assert sum(history.daily) > 0
