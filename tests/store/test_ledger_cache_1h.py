"""``ledger.cache_write_1h_tokens`` (migration 0023): the 1-hour part of a row's cache
writes is stored by both insert paths, rows from before the migration read 0, and a
spool written before the field existed still replays — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import (
    LedgerEntry,
    LedgerWriter,
    insert_entries,
)
from tests.store import old_rollups
from tests.store.test_spool import dead_spools_of_two_releases, make_spool
from tests.store.test_store import entry

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


async def cache_writes(engine: AsyncEngine) -> dict[str, tuple[int, int]]:
    ledger = schema.ledger.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(ledger.request_id, ledger.cache_write_tokens, ledger.cache_write_1h_tokens)
        )
        return {r[0]: (r[1], r[2]) for r in rows}


def with_writes(n: int, writes: int, one_hour: int) -> LedgerEntry:
    row = entry(n, team=None, model="claude-opus-4-5", cost=1, at=NOW)
    return row._replace(cache_write_tokens=writes, cache_write_1h_tokens=one_hour)


async def test_both_insert_paths_store_the_one_hour_writes(database_url: str) -> None:
    """SQLite's executemany and PostgreSQL's ``unnest`` of column arrays both store it."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await insert_entries(conn, [with_writes(1, 300, 200), with_writes(2, 50, 0)])
        assert await cache_writes(engine) == {"req_000001": (300, 200), "req_000002": (50, 0)}
    finally:
        await engine.dispose()


@pytest.mark.empty_database
async def test_rows_from_before_the_migration_read_zero(database_url: str) -> None:
    """A row written at 0022 (all its writes priced at the 5-minute rate) reads 0 after
    the upgrade."""
    engine = create_engine(database_url)
    try:
        await migrate(engine, "0022_key_expiry")
        async with engine.begin() as conn:
            await old_rollups.insert_ledger(conn, [with_writes(1, 300, 0)], old_rollups.LEDGER_0022)
        await migrate(engine)
        assert await cache_writes(engine) == {"req_000001": (300, 0)}
    finally:
        await engine.dispose()


async def test_a_spool_from_before_the_field_still_replays(
    database_url: str, tmp_path: Path
) -> None:
    """A spool file whose header and records lack ``cache_write_1h_tokens`` (written by
    the previous release, whose process died) replays: its row lands with 0 one-hour
    writes; a file of this release keeps them."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        await dead_spools_of_two_releases(
            engine,
            tmp_path,
            old_rollups.LEDGER_0022,
            with_writes(1, 300, 0),
            with_writes(2, 300, 200),
        )

        writer = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
        assert await writer.replay_orphans() == 2
        assert await cache_writes(engine) == {"req_000001": (300, 0), "req_000002": (300, 200)}
    finally:
        await engine.dispose()
