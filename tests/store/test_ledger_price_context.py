"""``price_context`` in the ledger (migration 0029): the service tier or speed whose
prices billed a call. Both insert paths store it (SQLite's executemany, PostgreSQL's
``unnest`` of column arrays), rows from before the migration read NULL (the standard
prices: none was recorded), the column goes down and up again, and a spool written
before the field existed still replays — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store import schema
from spendgate.store.database import create_engine, downgrade, migrate
from spendgate.store.ledger import LedgerWriter, Pending, ledger_rows, store_batch
from tests.store import old_rollups
from tests.store.test_showback import row
from tests.store.test_spool import dead_spools_of_two_releases, make_spool

AT = datetime(2026, 11, 10, 12, tzinfo=UTC)
BEFORE = "0028_ledger_web_searches"


async def _contexts(engine: AsyncEngine) -> dict[str, str | None]:
    ledger = schema.ledger.c
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(ledger.request_id, ledger.price_context))
        return {r[0]: r[1] for r in rows}


@pytest.mark.empty_database
async def test_the_migration_upgrades_a_ledger_with_rows_and_the_writer_stores_the_tier(
    database_url: str,
) -> None:
    """A database at 0028 with a ledger row: after the upgrade it reads NULL; rows
    written since keep their tier (and NULL for the standard prices), as the ledger's
    listing shows them; down to 0028 drops the column and keeps the rows, and up again
    reads NULL."""
    engine = create_engine(database_url)
    try:
        await migrate(engine, BEFORE)
        async with engine.begin() as conn:
            await old_rollups.insert_ledger(conn, [row("om1", 1, AT, 5)], old_rollups.LEDGER_0028)
        await migrate(engine)
        assert await _contexts(engine) == {"om1-1": None}
        late = [
            row("om1", 2, AT, 7)._replace(price_context="service_tier=priority"),
            row("om1", 3, AT, 9)._replace(price_context="speed=fast"),
            row("om1", 4, AT, 3),
        ]
        async with engine.begin() as conn:
            await store_batch(conn, [Pending(e) for e in late])
        assert await _contexts(engine) == {
            "om1-1": None,
            "om1-2": "service_tier=priority",
            "om1-3": "speed=fast",
            "om1-4": None,
        }
        listed = {r["request_id"]: r["price_context"] for r in await ledger_rows(engine)}
        assert listed["om1-2"] == "service_tier=priority"
        await downgrade(engine, BEFORE)
        async with engine.connect() as conn:
            names = await conn.run_sync(
                lambda c: {x["name"] for x in sa.inspect(c).get_columns("ledger")}
            )
            assert "price_context" not in names
            count = (await conn.execute(sa.text("SELECT count(*) FROM ledger"))).scalar()
        assert count == 4
        await migrate(engine)
        assert set((await _contexts(engine)).values()) == {None}
    finally:
        await engine.dispose()


async def test_a_spool_from_before_the_field_still_replays(
    database_url: str, tmp_path: Path
) -> None:
    """A spool file whose header and records lack ``price_context`` (written by the
    previous release, whose process died) replays: its row lands with NULL; a file of
    this release keeps the tier."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        priority = row("om1", 2, AT, 5)._replace(price_context="service_tier=priority")
        await dead_spools_of_two_releases(
            engine, tmp_path, list(old_rollups.LEDGER_0028), row("om1", 1, AT, 5), priority
        )
        writer = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
        assert await writer.replay_orphans() == 2
        assert await _contexts(engine) == {"om1-1": None, "om1-2": "service_tier=priority"}
    finally:
        await engine.dispose()
