"""Rollups on every backend: written with the ledger, counted once, and adding up to the
ledger to the nano-dollar in every zone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.budget_windows import iana_zones
from spendgate.store import schema
from spendgate.store.daily import set_daily_zone
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import LedgerEntry, LedgerWriter, Pending, store_batch
from spendgate.store.rebuild import rebuild
from spendgate.store.rollups import (
    usage_daily_zone,
    usage_rollup,
    usage_tag_rollup,
    usage_team_daily,
    usage_team_rollup,
)
from spendgate.store.showback import (
    MEASURES,
    _daily_days,
    report_rows,
    rollup_for,
    usage_report,
)

BASE = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH = date(1970, 1, 1)
ZONES = sorted(iana_zones())
HARD_ZONES = ["Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "America/St_Johns"]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def row(
    org: str,
    n: int,
    at: datetime,
    cost: int | None,
    *,
    team: str | None = "t1",
    model: str = "m1",
    tags: tuple[str, ...] = (),
) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"{org}-{n}",
        org_id=org,
        team_id=team,
        user_id=None,
        agent_id=None,
        key_id=f"k{n % 3}",
        tags=list(tags),
        provider="openai",
        model=model,
        upstream_model=model,
        kind="chat",
        stream=False,
        status="ok",
        http_status=200,
        input_tokens=n,
        output_tokens=1,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        cost_nanos=cost,
        price_unknown=cost is None,
        usage_estimated=False,
        latency_ms=1,
        started_at=at,
        finished_at=at,
    )


calls = st.lists(
    st.tuples(
        st.integers(0, 75 * 24 * 3600 - 1),  # second of a 75-day span
        st.one_of(st.none(), st.integers(0, 10**13)),  # nanos: up to $10,000 a call
        st.sampled_from(["t1", "T2", "Alpha", None]),  # absent sorts as "None": after "Alpha"
        st.sampled_from(["m1", "m2"]),
        st.sampled_from([(), ("prod",), ("search", "prod")]),
    ),
    min_size=1,
    max_size=60,
)


Made = list[tuple[int, int | None, str | None, str, tuple[str, ...]]]


def test_days_add_up_to_the_period_and_the_ledger_in_every_zone(database_url: str) -> None:
    """Property: for random ledgers and zones, the days (and hours, weeks, months) of a
    report add up to the period's total, which equals the ledger's sum, to the nanos (so
    do the calls billed on an estimate and their cost) —
    read from each rollup: the narrow one (by team and model), the wide one (by user)
    and the tag one (by tag), its rows in the order of their names; and a dry-run
    rebuild finds all three equal to the ledger row for row.

    Each example is a new org beside the previous example's (whose rollups the rebuild
    checks again, after this example's writes and refold); older orgs are deleted: the
    rebuild checks every org's days in its zone, and with every example's org kept it
    grew with each example (a third of the test's time on PostgreSQL)."""
    engine = create_engine(database_url)
    asyncio.run(migrate(engine))
    asyncio.run(engine.dispose())
    orgs: list[str] = []

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(calls, st.one_of(st.sampled_from(HARD_ZONES), st.sampled_from(ZONES)))
    def check(made: Made, zone: str) -> None:
        orgs.append(f"o{uuid.uuid4().hex[:10]}")
        asyncio.run(_check(database_url, orgs, made, zone))

    check()


def _estimated(n: int) -> bool:
    """Whether the ``n``th call of a property example is billed on an estimate."""
    return n % 3 == 1


#: every table holding an org's calls, its rollups or its daily zone
ORG_TABLES = (
    schema.ledger,
    usage_rollup,
    usage_tag_rollup,
    usage_team_rollup,
    usage_team_daily,
    usage_daily_zone,
)


async def _check(url: str, orgs: list[str], made: Made, zone: str) -> None:
    """The property for ``made`` in the newest of ``orgs``, beside the one before it;
    the older ones are deleted first."""
    engine = create_engine(url)
    org = orgs[-1]
    if len(orgs) > 2:
        async with engine.begin() as conn:
            for table in ORG_TABLES:
                await conn.execute(sa.delete(table).where(table.c.org_id.in_(orgs[:-2])))
        del orgs[:-2]
    writer = LedgerWriter(engine, flush_seconds=60, batch_size=17)
    half = len(made) // 2
    for n, (second, cost, team, model, tags) in enumerate(made):
        if n == half:  # the first half's daily rows are UTC days: refolded into ``zone``
            await writer.flush()
            async with engine.begin() as conn:
                await set_daily_zone(conn, org, zone)
        at = BASE + timedelta(seconds=second)
        call = row(org, n, at, cost, team=team, model=model, tags=tags)
        writer.add(call._replace(usage_estimated=_estimated(n)))
    await writer.flush()
    if half == 0:
        async with engine.begin() as conn:
            await set_daily_zone(conn, org, zone)
    await _daily_path_agrees(engine, org, made, zone)
    ledger_nanos = sum(c or 0 for _, c, _, _, _ in made)
    # grouped by tag, a call counts once under each of its tags (untagged once)
    tagged_nanos = sum((c or 0) * max(1, len(t)) for _, c, _, _, t in made)
    tagged_calls = sum(max(1, len(t)) for *_, t in made)
    whole = await usage_report(engine, [], None, None, org)
    assert whole[0]["cost_nanos"] == ledger_nanos
    assert whole[0]["requests"] == len(made)
    assert whole[0]["unpriced_requests"] == sum(c is None for _, c, _, _, _ in made)
    estimated = [c or 0 for n, (_, c, _, _, _) in enumerate(made) if _estimated(n)]
    assert (whole[0]["estimated_calls"], whole[0]["estimated_nanos"]) == (
        len(estimated),
        sum(estimated),
    )
    start, end = BASE - timedelta(days=1), BASE + timedelta(days=77)
    for grain in ("hour", "day", "week", "month"):
        for dims, table, nanos, calls in (
            ([grain], usage_team_rollup, ledger_nanos, len(made)),
            ([grain, "team", "model"], usage_team_rollup, ledger_nanos, len(made)),
            ([grain, "user", "model"], usage_rollup, ledger_nanos, len(made)),
            ([grain, "tag"], usage_tag_rollup, tagged_nanos, tagged_calls),
        ):
            assert rollup_for(dims[1:], {}) is table
            rows = await usage_report(engine, dims, start, end, org, timezone=zone)
            assert sum(r["cost_nanos"] for r in rows) == nanos, (grain, zone, table.name)
            assert rows == sorted(rows, key=lambda r: tuple(str(r[d]) for d in dims))
            assert sum(r["requests"] for r in rows) == calls
            if table is not usage_tag_rollup:
                assert sum(r["estimated_nanos"] for r in rows) == sum(estimated)
                assert sum(r["estimated_calls"] for r in rows) == len(estimated)
    checked = await rebuild(engine, start, end, dry_run=True)  # every org's rows so far
    assert checked.ledger_rows >= len(made)
    assert checked.difference_count == 0, checked.differences
    days = await usage_report(engine, ["day"], None, None, org, timezone=zone)
    local = ZoneInfo(zone)
    expected: dict[str, int] = {}
    for second, cost, _, _, _ in made:
        day = (BASE + timedelta(seconds=second)).astimezone(local).date().isoformat()
        expected[day] = expected.get(day, 0) + (cost or 0)
    assert {d["day"]: d["cost_nanos"] for d in days} == expected
    await engine.dispose()


async def _daily_path_agrees(engine: AsyncEngine, org: str, made: Made, zone: str) -> None:
    """The daily rollup holds the ledger's calls by local day of ``zone`` (its rows, to
    the nano), and every day, week and month report over whole local days answered from
    it equals the same report from the 15-minute rows."""
    local = ZoneInfo(zone)
    expected: dict[tuple[int, str, str], list[int]] = {}
    for n, (second, cost, team, model, _) in enumerate(made):
        day = ((BASE + timedelta(seconds=second)).astimezone(local).date() - EPOCH).days
        sums = expected.setdefault((day, team or "", model), [0, 0, 0, 0, 0])
        sums[0] += 1
        sums[1] += cost or 0
        sums[2] += cost is None
        sums[3] += _estimated(n)
        sums[4] += (cost or 0) if _estimated(n) else 0
    d = usage_team_daily
    query = sa.select(d).where(d.c.org_id == org)
    async with engine.connect() as conn:
        stored = {
            (r.day, r.team_id, r.model): [
                r.calls,
                r.cost_usd * 10**9 + r.cost_nanos,
                r.unpriced_calls,
                r.estimated_calls,
                r.estimated_usd * 10**9 + r.estimated_nanos,
            ]
            for r in await conn.execute(query)
        }
    assert stored == expected, zone
    first = datetime.combine(BASE.date() - timedelta(days=1), time(), local)
    last = datetime.combine(BASE.date() + timedelta(days=77), time(), local)
    # whole local days: the daily path (a zone whose midnight can be skipped may not be)
    assert _daily_days(first, last, zone) is not None or zone not in HARD_ZONES
    for bounds in ((None, None), (first, last), (first + timedelta(days=40), last)):
        for grain in ("day", "week", "month"):
            for dims in ([grain], [grain, "team", "model"], ["model", grain]):
                fast = await usage_report(engine, dims, *bounds, org, timezone=zone)
                slow = await usage_report(engine, dims, *bounds, org, timezone=zone, daily=False)
                assert fast == slow, (zone, grain, dims, bounds)


async def test_a_replayed_batch_is_counted_once(engine: AsyncEngine) -> None:
    """A batch stored again (a spool replayed, a retry after a lost commit answer) adds
    no ledger row and nothing to the rollups."""
    batch = [Pending(row("o1", n, BASE + timedelta(minutes=7 * n), 1_000 + n)) for n in range(9)]
    for _ in range(3):
        async with engine.begin() as conn:
            await store_batch(conn, batch)
    total = await usage_report(engine, [], None, None, "o1")
    assert total[0]["requests"] == 9
    assert total[0]["cost_nanos"] == sum(1_000 + n for n in range(9))


async def test_top_n_folds_the_rest_into_other_and_keeps_the_sum(engine: AsyncEngine) -> None:
    """top=2 keeps the two costliest models per day and one "other" row that holds the
    rest; the cumulative column runs per group across the days."""
    writer = LedgerWriter(engine, flush_seconds=60)
    models = {"a": 50, "b": 40, "c": 3, "d": 2}
    n = 0
    for day in range(3):
        for model, cost in models.items():
            writer.add(row("o2", n, BASE + timedelta(days=day), cost, model=model))
            n += 1
    await writer.flush()
    rows = await usage_report(engine, ["day", "model"], None, None, "o2", top=2, cumulative=True)
    assert {r["model"] for r in rows} == {"a", "b", "other"}
    other = [r for r in rows if r["model"] == "other"]
    assert [r["cost_nanos"] for r in other] == [5, 5, 5]
    assert [r["cumulative_cost_nanos"] for r in other] == [5, 10, 15]
    assert sum(r["cost_nanos"] for r in rows) == 3 * sum(models.values())


async def test_tags_and_filters(engine: AsyncEngine) -> None:
    """Grouped by tag, a call counts under each of its tags (untagged under None);
    filters narrow on any dimension, ``None`` meaning the dimension is absent."""
    writer = LedgerWriter(engine, flush_seconds=60)
    writer.add(row("o3", 1, BASE, 100, tags=("prod", "search")))
    writer.add(row("o3", 2, BASE, 10, tags=("prod",), team=None))
    writer.add(row("o3", 3, BASE, 1))
    await writer.flush()
    by_tag = await usage_report(engine, ["tag"], None, None, "o3")
    assert {r["tag"]: r["cost_nanos"] for r in by_tag} == {None: 1, "prod": 110, "search": 100}
    prod = await usage_report(engine, ["team"], None, None, "o3", filters={"tag": ["prod"]})
    assert {r["team"]: r["cost_nanos"] for r in prod} == {None: 10, "t1": 100}
    unowned = await usage_report(engine, [], None, None, "o3", filters={"team": [None]})
    assert unowned[0]["cost_nanos"] == 10


def test_report_rows_from_query_rows() -> None:
    """The query's rows become report rows: the local day named, the cost put together
    from whole dollars and nanos past 64 bits, a group with no calls left out."""
    names = ("day", "team", *MEASURES)
    whole = 2**40
    result = [
        (20513, None, 3, 1, 10, 4, 0, 6, 5, 2, 4, whole, 999_999_999, 1, 2, whole, 3),
        (20513, "t1", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (20514, "t1", 1, 0, 5, 5, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0),
    ]
    rows = report_rows(result, "day", "monday", names)
    assert [(r["day"], r["team"], r["cost_nanos"]) for r in rows] == [
        ("2026-03-01", None, whole * 10**9 + 999_999_999),
        ("2026-03-02", "t1", 7),
    ]
    assert rows[0]["requests"] == 3 and rows[0]["unpriced_requests"] == 1
    assert (rows[0]["cache_write_tokens"], rows[0]["cache_write_1h_tokens"]) == (6, 5)
    assert (rows[0]["reasoning_tokens"], rows[0]["web_searches"]) == (2, 4)
    assert (rows[0]["estimated_calls"], rows[0]["estimated_nanos"]) == (2, whole * 10**9 + 3)
    assert (rows[1]["estimated_calls"], rows[1]["estimated_nanos"]) == (0, 0)
    assert report_rows([], "day", "monday", names) == []


def test_report_rows_without_grain_and_refusing_odd_names() -> None:
    """With no grain or dimension a row is the sums alone; the generated row maker takes
    only identifiers followed by ``MEASURES`` (it writes them into code)."""
    row = report_rows([(2, 1, 3, 4, 0, 0, 0, 0, 0, 1, 5, 0, 1, 0, 7)], None, "monday", MEASURES)
    sums = (2, 1, 3, 4, 0, 0, 0, 0, 0, 10**9 + 5, 0, 1, 7)
    assert row == [dict(zip(MEASURES, sums, strict=True))]
    with pytest.raises(ValueError, match="report columns"):
        report_rows([], None, "monday", ("team']; import os #", *MEASURES))
    with pytest.raises(ValueError, match="report columns"):
        report_rows([], None, "monday", ("team", "requests"))


async def test_rebuild_names_tag_sets_as_the_writer_does(engine: AsyncEngine) -> None:
    """The rebuild names each call's tag set in the database (SQLite: with the writer's
    own ``tag_set``, its string aggregates keep no order): tags given in any order and
    repeated land in the writer's row, so a dry run finds no difference, and a changed
    row is found."""
    tags = [("search", "prod", "prod"), ("x:1", "Z", "a.b", "a-b"), ("a-b", "a.b", "Z", "x:1")]
    async with engine.begin() as conn:
        await store_batch(
            conn, [Pending(row("o4", n, BASE, 10, tags=t)) for n, t in enumerate(tags)]
        )
    span = (BASE, BASE + timedelta(hours=1))
    assert (await rebuild(engine, *span, dry_run=True)).difference_count == 0
    async with engine.connect() as conn:
        sets = (await conn.execute(sa.select(usage_rollup.c.tags).distinct())).scalars().all()
    assert sorted(sets) == ['["Z","a-b","a.b","x:1"]', '["prod","search"]']
    async with engine.begin() as conn:
        await conn.execute(usage_rollup.update().values(calls=usage_rollup.c.calls + 1))
    assert (await rebuild(engine, *span, dry_run=True)).difference_count == len(tags)  # a row each


async def test_rebuild_puts_a_call_in_the_bucket_of_the_second_it_started(
    engine: AsyncEngine,
) -> None:
    """A call started in the last half-millisecond before a bucket's end is in that
    bucket, as the writer puts it (SQLite rounds a time to the millisecond: counted from
    its rounded second, the rebuild would move it to the next bucket)."""
    bound = BASE + timedelta(minutes=15)
    times = [bound - timedelta(microseconds=us) for us in (1, 400, 499, 500, 501)]
    async with engine.begin() as conn:
        await store_batch(conn, [Pending(row("o5", n, at, 10)) for n, at in enumerate(times)])
    span = (BASE, BASE + timedelta(hours=1))
    assert (await rebuild(engine, *span, dry_run=True)).difference_count == 0


async def test_rebuild_finds_and_removes_narrow_rows_of_an_org_without_calls(
    engine: AsyncEngine,
) -> None:
    """The narrow rollup's key leads with the org, so the rebuild lists its orgs before
    searching a bucket range: a row of an org that made no call in the range (planted
    between two real orgs' ids) is still found, and a real rebuild removes it and
    leaves the real orgs' rows."""
    async with engine.begin() as conn:
        await store_batch(conn, [Pending(row(org, 0, BASE, 10)) for org in ("o5a", "o5c")])
        stray = {c.name: 1 for c in usage_team_rollup.columns}
        stray.update(org_id="o5b", bucket=int(BASE.timestamp()) // 900, team_id="t1",
                     provider="openai", model="m1", kind="chat", status="ok")  # fmt: skip
        await conn.execute(usage_team_rollup.insert().values(stray))
    span = (BASE, BASE + timedelta(hours=1))
    found = await rebuild(engine, *span, dry_run=True)
    assert found.difference_count == 1
    assert found.differences[0]["table"] == "usage_team_rollup"
    assert found.differences[0]["key"][0] == "o5b" and found.differences[0]["ledger"] == {}
    assert (await rebuild(engine, *span)).fixed
    assert (await rebuild(engine, *span, dry_run=True)).difference_count == 0
    async with engine.connect() as conn:
        orgs = (await conn.execute(sa.select(usage_team_rollup.c.org_id))).scalars().all()
    assert sorted(orgs) == ["o5a", "o5c"]


async def test_rebuild_fills_empty_rollups_as_the_writer_would(engine: AsyncEngine) -> None:
    """Rollups emptied behind the writer's back (as after a bulk load of the ledger): every
    row of the four rollup tables is a difference with nothing stored, and a real rebuild
    writes back exactly the writer's rows; a second one finds nothing to fix."""
    tables = (usage_rollup, usage_tag_rollup, usage_team_rollup, usage_team_daily)
    tags = [(), ("prod",), ("search", "prod")]
    async with engine.begin() as conn:
        await set_daily_zone(conn, "o6", "Asia/Kathmandu")
        await store_batch(
            conn,
            [
                Pending(row("o6", n, BASE + timedelta(minutes=37 * n), 10**9 + n, tags=tags[n % 3]))
                for n in range(60)
            ],
        )

    async def contents() -> list[list[tuple[object, ...]]]:
        async with engine.connect() as conn:
            return [sorted((await conn.execute(sa.select(t))).all()) for t in tables]

    written = await contents()
    assert all(written)
    async with engine.begin() as conn:
        for t in tables:
            await conn.execute(t.delete())
    span = (BASE, BASE + timedelta(days=2))
    fixed = await rebuild(engine, *span)
    assert fixed.fixed and fixed.difference_count == sum(len(rows) for rows in written)
    assert all(d["rollup"] == {} for d in fixed.differences)
    assert len(fixed.differences) == min(100, fixed.difference_count)
    assert await contents() == written
    again = await rebuild(engine, *span)
    assert again.difference_count == 0 and not again.fixed
