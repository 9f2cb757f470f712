"""A budget with categories reads its spend per bucket from the wide rollup and the
ledger's part buckets at either end (``forecasts.stored_buckets``): for budgets of every
scope and category kind, the figures equal a scan of the ledger to the nano, on SQLite
and PostgreSQL, with calls on the very edges of the range and past its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.forecasts import LedgerBuckets, ledger_buckets, stored_buckets
from spendgate.store.ledger import LedgerEntry, Pending, store_batch

ORG = "org_1"
#: not on a 15-minute bucket at either end: both ends are part buckets
START = datetime(2026, 3, 1, 10, 7, 30, tzinfo=UTC)
END = datetime(2026, 3, 3, 15, 52, 30, tzinfo=UTC)
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
    """Every 7 min 13 s over the range and an hour either side, and calls right on and
    around its edges and bucket bounds (the end is exclusive)."""
    times, at = [], START - timedelta(hours=1)
    while at < END + timedelta(hours=1):
        times.append(at)
        at += timedelta(minutes=7, seconds=13)
    for edge in (START, END, datetime(2026, 3, 1, 10, 15, tzinfo=UTC)):
        times += [edge - timedelta(microseconds=1), edge, edge + timedelta(microseconds=1)]
    times.append(datetime(2026, 3, 3, 15, 59, 59, tzinfo=UTC))  # after END, in its bucket
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
        await store_batch(conn, [Pending(c) for c in _calls()])
    yield engine
    await engine.dispose()


def _sums(budget: rules.Budget, found: LedgerBuckets) -> dict[int, int]:
    """The budget's spend per bucket (``budget_rules.applies`` on each subject)."""
    out: dict[int, int] = {}
    for subject, buckets, costs in found.by_org.get(ORG, []):
        if rules.applies(budget, subject):
            for b, cost in zip(buckets.tolist(), costs.tolist(), strict=True):
                out[b] = out.get(b, 0) + cost
    return {b: v for b, v in out.items() if v}


@pytest.mark.parametrize("seconds", [900, 3600])
async def test_stored_buckets_equal_the_ledger_scan_for_every_category_kind(
    engine: AsyncEngine, seconds: int
) -> None:
    ledger = await ledger_buckets(engine, START, END, seconds, [ORG])
    counted = 0
    for budget in BUDGETS:
        stored = await stored_buckets(engine, START, END, seconds, ORG, rules.scope_field(budget))
        expected = _sums(budget, ledger)
        # the ledger scan itself is right: the calls the budget counts in [START, END)
        subjects = [
            (c, rules.Subject(ORG, c.team_id, c.user_id, c.agent_id, c.key_id, tuple(c.tags),
                              c.provider, c.model, c.kind))
            for c in _calls()
        ]  # fmt: skip
        assert sum(expected.values()) == sum(
            c.cost_nanos or 0
            for c, s in subjects
            if START <= c.started_at < END and rules.applies(budget, s)
        )
        assert _sums(budget, stored) == expected, budget
        counted += bool(expected)
    assert counted == len(BUDGETS)  # every budget counts some calls: none compared empty


@pytest.mark.parametrize("seconds", [900, 3600])
@pytest.mark.parametrize("earlier", [timedelta(0), timedelta(minutes=30)])
async def test_a_call_is_in_the_bucket_of_the_second_it_started(
    engine: AsyncEngine, seconds: int, earlier: timedelta
) -> None:
    """Per bucket, not only in total: the ledger scan and the stored buckets put each call
    in the bucket of the (whole) second it started, as the rollups' writer does, also
    one started a microsecond before a bucket's end (SQLite rounds a time to the
    millisecond). ``earlier``: that call falls in a part bucket at the start, or in the
    whole buckets read from the rollup."""
    start = START - earlier
    truth: dict[int, int] = {}
    for c in _calls():
        if start <= c.started_at < END and c.cost_nanos is not None:
            b = int(c.started_at.timestamp()) // seconds
            truth[b] = truth.get(b, 0) + c.cost_nanos
    truth = {b: v for b, v in truth.items() if v}
    everything = _budget("org", ORG)
    assert _sums(everything, await ledger_buckets(engine, start, END, seconds, [ORG])) == truth
    assert _sums(everything, await stored_buckets(engine, start, END, seconds, ORG)) == truth
