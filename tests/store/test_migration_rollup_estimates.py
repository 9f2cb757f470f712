"""Migration 0026: rollups written before it get the estimated calls and cost of their
ledger rows, in every rollup table (the daily one in the org's zone), so that a rebuild
finds nothing to change and the reports show them; the writer and the rebuild keep
them from then on — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store.database import create_engine, downgrade, migrate
from spendgate.store.ledger import LedgerEntry, Pending, store_batch
from spendgate.store.rebuild import rebuild
from spendgate.store.showback import usage_report
from tests.store import old_rollups
from tests.store.test_showback import row

pytestmark = pytest.mark.empty_database

KTM = "Asia/Kathmandu"
MARCH = datetime(2026, 3, 1, tzinfo=ZoneInfo(KTM))
APRIL = datetime(2026, 4, 1, tzinfo=ZoneInfo(KTM))
#: a cost near the 64-bit limit (nanos): two of them sum past it
BIG = 5 * 10**18
#: (when, team, tags, cost, estimated): 18:10 UTC is 23:55 in Kathmandu, 18:20 the next
#: local day; the first two share a 15-minute bucket, one estimated and one not
CALLS = [
    (datetime(2026, 3, 1, 18, 10, tzinfo=UTC), "t1", ("prod",), 1_000_000_007, True),
    (datetime(2026, 3, 1, 18, 12, tzinfo=UTC), "t1", ("prod", "search"), 2_000_000_000, False),
    (datetime(2026, 3, 1, 18, 20, tzinfo=UTC), None, (), 30, True),
    (datetime(2026, 3, 8, 7, 10, tzinfo=UTC), "t1", ("search",), BIG, True),
    (datetime(2026, 3, 8, 7, 11, tzinfo=UTC), "t1", ("search",), BIG, True),
]


def _calls() -> list[LedgerEntry]:
    return [
        row("om1", n, at, cost, team=team, tags=tags)._replace(usage_estimated=estimated)
        for n, (at, team, tags, cost, estimated) in enumerate(CALLS)
    ]


async def _at_0025(engine: AsyncEngine) -> None:
    """The ledger rows and their rollups as the 0025 writer left them."""
    await migrate(engine, "0025_audit_team_ids")
    async with engine.begin() as conn:
        await old_rollups.seed(conn, _calls(), KTM, MARCH, old_rollups.TOKENS_0024)


async def _estimated(engine: AsyncEngine, group_by: list[str]) -> list[tuple[object, ...]]:
    rows = await usage_report(engine, group_by, MARCH, APRIL, "om1", timezone=KTM)
    return [
        (*(r[g] for g in group_by), r["requests"], r["estimated_calls"], r["estimated_nanos"])
        for r in rows
    ]


async def test_upgrade_fills_every_rollup_from_the_ledger(database_url: str) -> None:
    """After the upgrade a dry-run rebuild (the ledger summed by the database, all four
    rollups compared, the daily one per local day of Kathmandu) finds no difference, and
    the reports read the estimates from each rollup: per local day (daily), per
    15-minute range (narrow), per key (wide) and per tag (tag) — two costs near the
    64-bit limit summed past it, exactly."""
    engine = create_engine(database_url)
    try:
        await _at_0025(engine)
        await migrate(engine)
        check = await rebuild(engine, MARCH, APRIL, dry_run=True)
        assert check.difference_count == 0, check.differences
        assert await _estimated(engine, ["day"]) == [
            ("2026-03-01", 2, 1, 1_000_000_007),
            ("2026-03-02", 1, 1, 30),
            ("2026-03-08", 2, 2, 2 * BIG),
        ]
        hour = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)  # cuts a local day: the narrow rows
        rows = await usage_report(engine, ["team"], hour, APRIL, "om1", timezone=KTM)
        assert {r["team"]: r["estimated_nanos"] for r in rows} == {
            "t1": 2 * BIG + 1_000_000_007,
            None: 30,
        }
        keys = await _estimated(engine, ["key"])
        assert sum(k[-1] for k in keys) == 2 * BIG + 1_000_000_037 and len(keys) > 1
        assert await _estimated(engine, ["tag"]) == [
            (None, 1, 1, 30),  # sorted by name: "None"
            ("prod", 2, 1, 1_000_000_007),
            ("search", 3, 2, 2 * BIG),
        ]
    finally:
        await engine.dispose()


async def test_after_the_upgrade_the_writer_adds_and_a_rebuild_checks_it(
    database_url: str,
) -> None:
    """A call written after the upgrade adds its estimate to the rows the upgrade filled;
    a daily row changed behind the writer's back in that figure alone is found and put
    right by a rebuild. PostgreSQL: the narrow and daily primary keys cover the new sums.
    The downgrade drops them again."""
    engine = create_engine(database_url)
    try:
        await _at_0025(engine)
        await migrate(engine)
        late = row("om1", 9, CALLS[0][0], 5, tags=("prod",))._replace(usage_estimated=True)
        async with engine.begin() as conn:
            await store_batch(conn, [Pending(late)])
        assert (await _estimated(engine, ["day"]))[0] == ("2026-03-01", 3, 2, 1_000_000_012)
        diff = await old_rollups.tamper_and_repair(engine, "estimated_calls", MARCH, APRIL)
        assert diff["rollup"]["estimated_calls"] == diff["ledger"]["estimated_calls"] + 1
        for included in await old_rollups.covered_sums(engine):
            assert "estimated_nanos" in included and "estimated_usd" in included
        await downgrade(engine, "0025_audit_team_ids")
        async with engine.connect() as conn:
            names = await conn.run_sync(
                lambda sync: [c["name"] for c in sa.inspect(sync).get_columns("usage_team_daily")]
            )
        assert "estimated_calls" not in names and "cache_write_1h_tokens" in names
    finally:
        await engine.dispose()
