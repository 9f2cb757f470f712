"""Migration 0024: rollups written before it (no ``cache_write_1h_tokens``) get the
1-hour cache writes of their ledger rows, in every rollup table (the daily one in the
org's zone), so that a rebuild finds nothing to change and the reports show them; the
writer and the rebuild keep the column from then on — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import LedgerEntry, Pending, sqlite_row, store_batch
from spendgate.store.rebuild import rebuild
from spendgate.store.showback import usage_report
from tests.store import old_rollups
from tests.store.test_showback import row

pytestmark = pytest.mark.empty_database

KTM = "Asia/Kathmandu"
MARCH = datetime(2026, 3, 1, tzinfo=ZoneInfo(KTM))
APRIL = datetime(2026, 4, 1, tzinfo=ZoneInfo(KTM))
#: (when, team, tags, cache writes, of which for an hour): 18:10 UTC is 23:55 in
#: Kathmandu, 18:20 the next local day; two calls share a 15-minute bucket
CALLS = [
    (datetime(2026, 3, 1, 18, 10, tzinfo=UTC), "t1", ("prod",), 300, 200),
    (datetime(2026, 3, 1, 18, 12, tzinfo=UTC), "t1", ("prod", "search"), 90, 40),
    (datetime(2026, 3, 1, 18, 20, tzinfo=UTC), None, (), 50, 0),
    (datetime(2026, 3, 8, 7, 10, tzinfo=UTC), "t1", ("search",), 1000, 1000),
]


def _calls() -> list[LedgerEntry]:
    return [
        row("om1", n, at, 1_000_000_007 * (n + 1), team=team, tags=tags)._replace(
            cache_write_tokens=writes, cache_write_1h_tokens=one_hour
        )
        for n, (at, team, tags, writes, one_hour) in enumerate(CALLS)
    ]


async def _at_0023(engine: AsyncEngine) -> None:
    """The ledger rows and their rollups as the 0023 writer left them."""
    await migrate(engine, "0023_cache_1h")
    async with engine.begin() as conn:
        await old_rollups.seed(conn, _calls(), KTM, MARCH)


async def _one_hour(engine: AsyncEngine, group_by: list[str]) -> list[tuple[object, ...]]:
    rows = await usage_report(engine, group_by, MARCH, APRIL, "om1", timezone=KTM)
    return [
        (*(r[g] for g in group_by), r["cache_write_tokens"], r["cache_write_1h_tokens"])
        for r in rows
    ]


async def test_upgrade_fills_every_rollup_from_the_ledger(database_url: str) -> None:
    """After the upgrade a dry-run rebuild (the ledger summed by the database, all four
    rollups compared, the daily one per local day of Kathmandu) finds no difference, and
    the reports read the 1-hour writes from each rollup: per local day (daily), per
    15-minute range (narrow), per key (wide) and per tag (tag)."""
    engine = create_engine(database_url)
    try:
        await _at_0023(engine)
        await migrate(engine)
        check = await rebuild(engine, MARCH, APRIL, dry_run=True)
        assert check.difference_count == 0, check.differences
        assert await _one_hour(engine, ["day"]) == [
            ("2026-03-01", 390, 240),
            ("2026-03-02", 50, 0),
            ("2026-03-08", 1000, 1000),
        ]
        hour = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)  # cuts a local day: the narrow rows
        rows = await usage_report(engine, ["team"], hour, APRIL, "om1", timezone=KTM)
        assert {r["team"]: r["cache_write_1h_tokens"] for r in rows} == {"t1": 1240, None: 0}
        keys = await _one_hour(engine, ["key"])
        assert sum(k[-1] for k in keys) == 1240 and len(keys) > 1
        assert await _one_hour(engine, ["tag"]) == [
            (None, 50, 0),  # sorted by name: "None"
            ("prod", 390, 240),
            ("search", 1090, 1040),
        ]
    finally:
        await engine.dispose()


async def test_after_the_upgrade_the_writer_adds_and_a_rebuild_checks_it(
    database_url: str,
) -> None:
    """A call written after the upgrade adds its 1-hour writes to the rows the upgrade
    filled; a daily row changed behind the writer's back in that figure alone is found
    and put right by a rebuild. PostgreSQL: the narrow and daily primary keys cover it."""
    engine = create_engine(database_url)
    try:
        await _at_0023(engine)
        await migrate(engine)
        late = row("om1", 9, CALLS[0][0], 5, tags=("prod",))._replace(
            cache_write_tokens=20, cache_write_1h_tokens=20
        )
        async with engine.begin() as conn:
            await store_batch(conn, [Pending(late)])
        assert (await _one_hour(engine, ["day"]))[0] == ("2026-03-01", 410, 260)
        diff = await old_rollups.tamper_and_repair(engine, "cache_write_1h_tokens", MARCH, APRIL)
        assert (
            diff["rollup"]["cache_write_1h_tokens"] == diff["ledger"]["cache_write_1h_tokens"] + 1
        )
        for included in await old_rollups.covered_sums(engine):
            assert "cache_write_1h_tokens" in included
    finally:
        await engine.dispose()


async def test_the_older_migrations_fill_the_rollups_with_their_own_columns(
    database_url: str,
) -> None:
    """Ledger rows stored before 0013 (no rollups yet, no ``cache_write_1h_tokens``):
    0013, 0018 and 0020 fill the rollups of their revisions from them (each naming its
    own columns, so none reads or writes the 1-hour column before it exists) and 0024
    adds it; a dry-run rebuild then finds every rollup equal to the ledger."""
    engine = create_engine(database_url)
    try:
        await migrate(engine, "0014_console")  # 0013's down revision
        fields = LedgerEntry._fields[: LedgerEntry._fields.index("finished_at") + 1]
        calls = [c._replace(cache_write_1h_tokens=0) for c in _calls()]
        async with engine.begin() as conn:
            for call in calls:
                if engine.dialect.name == "sqlite":
                    values = dict(zip(LedgerEntry._fields, sqlite_row(call), strict=True))
                else:
                    values = {**call._asdict(), "tags": json.dumps(call.tags)}
                await conn.execute(
                    sa.text(
                        f"INSERT INTO ledger ({', '.join(fields)}) "
                        f"VALUES ({', '.join(f':{f}' for f in fields)})"
                    ),
                    {f: values[f] for f in fields},
                )
        await migrate(engine)
        check = await rebuild(engine, MARCH, APRIL, dry_run=True)
        assert check.difference_count == 0, check.differences
        assert check.rollup_rows > 0
        assert await _one_hour(engine, ["tag"]) == [
            (None, 50, 0),
            ("prod", 390, 0),
            ("search", 1090, 0),
        ]
    finally:
        await engine.dispose()
