"""``web_searches`` in the ledger and the rollups (migration 0028): both insert paths
store it, every rollup sums it, rows and rollups from before the migration read 0 (a
rebuild then finds nothing to change), and a spool written before the field existed
still replays — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store import schema
from spendgate.store.database import create_engine, downgrade, migrate
from spendgate.store.ledger import LedgerEntry, LedgerWriter, Pending, store_batch
from spendgate.store.rebuild import rebuild
from spendgate.store.showback import usage_report
from tests.store import old_rollups
from tests.store.test_showback import row
from tests.store.test_spool import dead_spools_of_two_releases, make_spool

KTM = "Asia/Kathmandu"
MARCH = datetime(2026, 3, 1, tzinfo=ZoneInfo(KTM))
APRIL = datetime(2026, 4, 1, tzinfo=ZoneInfo(KTM))
#: (when, team, tags): 18:10 UTC is 23:55 in Kathmandu, 18:20 the next local day
CALLS = [
    (datetime(2026, 3, 1, 18, 10, tzinfo=UTC), "t1", ("prod",)),
    (datetime(2026, 3, 1, 18, 12, tzinfo=UTC), "t1", ("prod", "search")),
    (datetime(2026, 3, 1, 18, 20, tzinfo=UTC), None, ()),
]


def _calls() -> list[LedgerEntry]:
    return [
        row("om1", n, at, 1_000_000_007 * (n + 1), team=team, tags=tags)
        for n, (at, team, tags) in enumerate(CALLS)
    ]


async def _searches(engine: AsyncEngine) -> dict[str, int]:
    ledger = schema.ledger.c
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(ledger.request_id, ledger.web_searches))
        return {r[0]: r[1] for r in rows}


async def _report(engine: AsyncEngine, group_by: list[str]) -> list[tuple[object, ...]]:
    rows = await usage_report(engine, group_by, MARCH, APRIL, "om1", timezone=KTM)
    return [(*(r[g] for g in group_by), r["requests"], r["web_searches"]) for r in rows]


async def _at_0027(engine: AsyncEngine) -> None:
    """The ledger rows and their rollups as the 0027 writer left them (no searches)."""
    await migrate(engine, "0027_audit_replace_guards")
    async with engine.begin() as conn:
        await old_rollups.seed(conn, _calls(), KTM, MARCH, old_rollups.TOKENS_0024)


@pytest.mark.empty_database
async def test_rows_from_before_the_migration_read_zero_searches(database_url: str) -> None:
    """A database at 0027 with ledger rows and their rollups: after the upgrade every row
    reads 0 searches, a dry-run rebuild finds every rollup equal to the ledger, and the
    reports say 0 from each rollup (daily, narrow, wide, tag)."""
    engine = create_engine(database_url)
    try:
        await _at_0027(engine)
        await migrate(engine)
        assert await _searches(engine) == {"om1-0": 0, "om1-1": 0, "om1-2": 0}
        check = await rebuild(engine, MARCH, APRIL, dry_run=True)
        assert check.difference_count == 0, check.differences
        assert await _report(engine, ["day"]) == [("2026-03-01", 2, 0), ("2026-03-02", 1, 0)]
        hour = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)  # cuts a local day: the narrow rows
        rows = await usage_report(engine, ["team"], hour, APRIL, "om1", timezone=KTM)
        assert {r["team"]: r["web_searches"] for r in rows} == {"t1": 0, None: 0}
        assert sum(k[-1] for k in await _report(engine, ["key"])) == 0
        assert await _report(engine, ["tag"]) == [(None, 1, 0), ("prod", 2, 0), ("search", 1, 0)]
    finally:
        await engine.dispose()


@pytest.mark.empty_database
async def test_after_the_upgrade_the_writer_adds_searches_and_a_rebuild_checks_them(
    database_url: str,
) -> None:
    """Calls written after the upgrade add their searches to the rows from before it, in
    every rollup; a daily row changed behind the writer's back in that figure alone is
    found and put right by a rebuild. PostgreSQL: the narrow and daily primary keys cover
    it. Down to 0027 and up again keeps the other figures."""
    engine = create_engine(database_url)
    try:
        await _at_0027(engine)
        await migrate(engine)
        late = [
            row("om1", 7, CALLS[0][0], 5, team="t1", tags=("prod",))._replace(web_searches=2),
            row("om1", 8, CALLS[2][0], 5, team=None, tags=("search",))._replace(web_searches=3),
        ]
        async with engine.begin() as conn:
            await store_batch(conn, [Pending(e) for e in late])
        assert (await _searches(engine))["om1-8"] == 3
        assert await _report(engine, ["day"]) == [("2026-03-01", 3, 2), ("2026-03-02", 2, 3)]
        assert await _report(engine, ["tag"]) == [(None, 1, 0), ("prod", 3, 2), ("search", 2, 3)]
        assert sum(k[-1] for k in await _report(engine, ["key"])) == 5
        assert (await rebuild(engine, MARCH, APRIL, dry_run=True)).difference_count == 0
        diff = await old_rollups.tamper_and_repair(engine, "web_searches", MARCH, APRIL)
        assert (diff["rollup"]["web_searches"], diff["ledger"]["web_searches"]) == (4, 3)
        for included in await old_rollups.covered_sums(engine):
            assert "web_searches" in included
        await downgrade(engine, "0027_audit_replace_guards")
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {t: {x["name"] for x in sa.inspect(c).get_columns(t)} for t in
                           ("ledger", "usage_rollup", "usage_team_daily")}
            )  # fmt: skip
        assert not any("web_searches" in names for names in columns.values())
        await migrate(engine)
        assert await _report(engine, ["day"]) == [("2026-03-01", 3, 0), ("2026-03-02", 2, 0)]
    finally:
        await engine.dispose()


async def test_a_spool_from_before_the_field_still_replays(
    database_url: str, tmp_path: Path
) -> None:
    """A spool file whose header and records lack ``web_searches`` (written by the
    previous release, whose process died) replays: its row lands with 0 searches; a file
    of this release keeps them, in the ledger and the rollups."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        searched = row("om1", 2, CALLS[0][0], 5, team="t1")._replace(web_searches=4)
        await dead_spools_of_two_releases(
            engine,
            tmp_path,
            old_rollups.LEDGER_0023,
            row("om1", 1, CALLS[0][0], 5, team="t1"),
            searched,
        )

        writer = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
        assert await writer.replay_orphans() == 2
        assert await _searches(engine) == {"om1-1": 0, "om1-2": 4}
        [total] = await usage_report(engine, [], None, None, "om1")
        assert (total["requests"], total["web_searches"]) == (2, 4)
    finally:
        await engine.dispose()
