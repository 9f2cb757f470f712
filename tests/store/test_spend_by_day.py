"""Budgets' spend per local day is summed by the database from the rollups' whole
15-minute buckets (or local days) and the ledger's part buckets at either end
(``forecasts.spend_by_day``): for budgets of every scope and category kind, in zones with
DST (a half-hour one too) and half- and quarter-hour offsets, the days and the forecasts'
daily history equal the calls themselves and a scan of the ledger alone, to the nano, on
SQLite and PostgreSQL, with calls on the very edges of the window, of local days and past
the window's end. Org and team budgets that name no user, agent, key or tag read the
narrow rollups (the daily one for the whole local days of an org whose daily rows are in
the read's zone, else the 15-minute one): the same days, for two orgs whose daily rows
are in different zones, in windows that cut a day at either end or none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.core import showback as sb
from spendgate.core.showback import local_day
from spendgate.store import schema
from spendgate.store.daily import set_daily_zone
from spendgate.store.database import create_engine, migrate
from spendgate.store.forecasts import (
    HISTORY_DAYS,
    DailySpend,
    LedgerDays,
    read_days,
    reads,
    spend_by_day,
)
from spendgate.store.ledger import LedgerEntry, Pending, store_batch
from spendgate.store.rollups import NARROW_DIMENSIONS

ORG = "org_1"
#: a second org: the same call times, its own teams, users, agents, keys and costs, its
#: daily rows in another zone than ``ORG``'s (its reporting zone)
OTHER = "org_2"
OTHER_ZONE = "Asia/Kolkata"
NEW_YORK = ZoneInfo("America/New_York")
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


def _other(c: LedgerEntry) -> LedgerEntry:
    """``c`` as ``OTHER``'s call: its own names and another cost."""

    def own(name: str | None) -> str | None:
        return None if name is None else f"{name}_2"

    cost = None if c.cost_nanos is None else 3 * c.cost_nanos + 5
    return c._replace(
        request_id=f"o2_{c.request_id}", org_id=OTHER, team_id=own(c.team_id),
        user_id=own(c.user_id), agent_id=own(c.agent_id), key_id=f"{c.key_id}_2",
        cost_nanos=cost,
    )  # fmt: skip


CALLS = [*_calls(), *map(_other, _calls())]
#: each call's subject, and its local date in each zone
SUBJECTS = [
    rules.Subject(
        c.org_id, c.team_id, c.user_id, c.agent_id, c.key_id, tuple(c.tags), c.provider,
        c.model, c.kind,
    )
    for c in CALLS
]  # fmt: skip
LOCAL_DATES = {tz: [c.started_at.astimezone(ZoneInfo(tz)).date() for c in CALLS] for tz in ZONES}


def _budget(
    scope_type: str, scope_id: str | None, org: str = ORG, **categories: list[str]
) -> rules.Budget:
    return rules.Budget(
        id=f"b_{org}_{scope_type}_{sorted(categories.items())}",
        org_id=org,
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


#: org and team budgets that name no user, agent, key or tag (read from the narrow
#: rollups), of both orgs: every category kind but tags, and none
TEAM_BUDGETS = [
    _budget(scope, scope_id, org, **categories)
    for org, suffix in ((ORG, ""), (OTHER, "_2"))
    for scope, scope_id in [("org", org), ("team", f"team_a{suffix}"), ("team", f"team_b{suffix}")]
    for categories in [
        {"providers": ["azure"]},
        {"models": ["gpt-4o"]},
        {"models": ["gpt-4o*", "claude-*"], "kinds": ["chat", "responses"]},
        {"providers": ["openai"], "kinds": ["embeddings"]},
        {},
    ]
]
TEAM_DIMENSIONS = frozenset().union(*map(rules.dimensions, TEAM_BUDGETS))
#: windows over the calls: a part bucket at either end (both days cut); one cut at the
#: start on a bucket bound, ending on a UTC midnight; local midnights of New York, either
#: side of its change to summer time; less than a day
WINDOWS = [
    (START, END),
    (datetime(2026, 3, 6, 10, 15, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)),
    (datetime(2026, 3, 7, 5, tzinfo=UTC), datetime(2026, 3, 20, 4, tzinfo=UTC)),
    (datetime(2026, 3, 29, 0, 45, tzinfo=UTC), datetime(2026, 3, 29, 23, 15, tzinfo=UTC)),
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id=ORG, name="acme", created_at=START))
        await conn.execute(
            schema.orgs.insert().values(
                id=OTHER, name="other", created_at=START, reporting_timezone=OTHER_ZONE
            )
        )
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
    for subject, days, costs in found.by_org.get(budget.org_id, []):
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


async def _daily_zone(engine: AsyncEngine, org: str, tz: str) -> None:
    """Put ``org``'s daily rows in ``tz`` (as a change of its reporting zone does)."""
    async with engine.begin() as conn:
        await set_daily_zone(conn, org, tz)


@pytest.mark.parametrize("daily_zone", ["UTC", "America/New_York", "Australia/Lord_Howe"])
async def test_org_and_team_budgets_days_from_the_narrow_rollups(
    engine: AsyncEngine, daily_zone: str
) -> None:
    """``ORG``'s daily rows in ``daily_zone``, ``OTHER``'s in Kolkata: a read of one zone
    (of both orgs, or of every org) takes the whole local days of the org whose daily rows
    are in it from the daily rollup and everything else from the 15-minute one, a read of
    every zone the 15-minute one; each org and team budget's days equal the calls, in
    every window (days cut at either end, or at neither, or no whole day)."""
    await _daily_zone(engine, ORG, daily_zone)
    asked = [([tz], orgs) for tz in ZONES for orgs in ([ORG, OTHER], None)]
    for start, end in WINDOWS:
        for zones, orgs in [*asked, (ZONES, [ORG, OTHER])]:
            found = await spend_by_day(engine, start, end, zones, orgs, dimensions=TEAM_DIMENSIONS)
            assert found.dimensions == NARROW_DIMENSIONS
            for budget in TEAM_BUDGETS:
                for tz in zones:
                    truth = _truth(budget, tz, start, end)
                    assert _days(budget, tz, found) == truth, (budget, tz, start, end, orgs)
    counted = [len(_truth(b, daily_zone, START, END)) > 20 for b in TEAM_BUDGETS]
    assert all(counted)  # every budget counts calls on most days


#: what each rollup's rows are made to overstate (per row): a day's error then tells
#: which tables its figure was summed from (no day has 1,000 rows in any of them)
TAMPER = {"usage_rollup": 1, "usage_team_rollup": 1_000, "usage_team_daily": 1_000_000}


async def test_a_read_takes_the_narrowest_rollup_that_answers_it(engine: AsyncEngine) -> None:
    """``ORG``'s rows of each rollup overstated by their table's own amount: a read for
    budgets naming a tag sums the wide rollup alone; one for org and team budgets, in the
    zone of the org's daily rows, the daily rollup for every whole day of the window
    and the 15-minute narrow one for the days cut at either end; in another zone, or in
    several, the narrow one for every day. ``OTHER`` (untouched) is read as it is."""
    await _daily_zone(engine, ORG, "America/New_York")
    async with engine.begin() as conn:
        for table, extra in TAMPER.items():
            await conn.execute(
                sa.text(f"UPDATE {table} SET cost_nanos = cost_nanos + {extra} WHERE org_id = :o"),
                {"o": ORG},
            )

    async def took(
        zones: list[str], tz: str, budget: rules.Budget, dimensions: frozenset[str]
    ) -> dict[date, set[str]]:
        found = await spend_by_day(engine, START, END, zones, [ORG, OTHER], dimensions=dimensions)
        days, truth = _days(budget, tz, found), _truth(budget, tz, START, END)
        out: dict[date, set[str]] = {}
        for day in sorted({*days, *truth}):
            error = days.get(day, 0) - truth.get(day, 0)
            out[day] = {t for t, extra in TAMPER.items() if error // extra % 1000}
        return out

    org, everything = _budget("org", ORG), frozenset(sb.DIMENSIONS)
    first, last = START.astimezone(NEW_YORK).date(), END.astimezone(NEW_YORK).date()
    for dims in (everything, rules.dimensions(_budget("org", ORG, tags=["search"]))):
        wide = await took(["America/New_York"], "America/New_York", org, dims)
        assert len(wide) > 25 and all(v == {"usage_rollup"} for v in wide.values()), wide
    daily = await took(["America/New_York"], "America/New_York", org, TEAM_DIMENSIONS)
    assert daily.pop(first) == daily.pop(last) == {"usage_team_rollup"}
    assert len(daily) > 25 and all(v == {"usage_team_daily"} for v in daily.values()), daily
    for zones, tz in ((["Europe/Berlin"], "Europe/Berlin"), (ZONES, "America/New_York")):
        narrow = await took(zones, tz, org, TEAM_DIMENSIONS)
        assert all(v == {"usage_team_rollup"} for v in narrow.values()), (zones, narrow)
    for tz in (OTHER_ZONE, "America/New_York"):  # OTHER's zone, or ORG's
        found = await spend_by_day(
            engine, START, END, [tz], [ORG, OTHER], dimensions=TEAM_DIMENSIONS
        )
        other = _budget("org", OTHER, OTHER)
        assert _days(other, tz, found) == _truth(other, tz, START, END)


@pytest.mark.parametrize("now", [END, END - timedelta(hours=7, minutes=45)])
@pytest.mark.parametrize("daily_zone", ["UTC", "Australia/Lord_Howe"])
async def test_the_daily_history_equals_the_ledgers_in_every_zone(
    engine: AsyncEngine, now: datetime, daily_zone: str
) -> None:
    """What ``refresh_all`` forecasts from: each complete local day of the lookback and
    today so far, read as it reads them (``reads``: the budgets naming a user, agent, key
    or tag together, the others a read per zone; ``read_days``), equal to the same read
    of the ledger alone and to the calls (``now`` on a part bucket: today's last bucket
    is the ledger's), with ``ORG``'s daily rows in ``daily_zone`` (``OTHER``'s in
    Kolkata)."""
    await _daily_zone(engine, ORG, daily_zone)
    start, end = now - timedelta(days=HISTORY_DAYS + 2), now + timedelta(seconds=1)
    everything = await spend_by_day(engine, start, end, ZONES, [ORG, OTHER], rollup=False)
    ledger = DailySpend(everything, now)
    budgets = [replace(b, timezone=tz) for b in [*BUDGETS, *TEAM_BUDGETS] for tz in ZONES]
    groups = reads(budgets)
    assert [len({b.timezone for b in g}) for g in groups] == [len(ZONES)] + [1] * len(ZONES)
    assert not any(rules.dimensions(b) <= NARROW_DIMENSIONS for b in groups[0])
    for group in groups:
        stored = DailySpend(await read_days(engine, group, now), now)
        for budget in group:
            history = stored.history(budget)
            assert history == ledger.history(budget), budget
            truth = _truth(budget, budget.timezone, start, end)
            first = history.today - timedelta(days=HISTORY_DAYS)
            assert history.daily == tuple(
                truth.get(first + timedelta(days=i), 0) for i in range(HISTORY_DAYS)
            ), budget
            assert history.today_spent == truth.get(history.today, 0)
            assert sum(history.daily) > 0
