"""A statement's total past 64 bits of nanos ($9.2 billion an org-month) is stored and
read back exactly, and migration 0018 fills the narrow rollup from the wide one and
splits the totals of statements already stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store import rollups, schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import LedgerEntry, Pending, store_batch
from spendgate.store.statements import close, list_statements, stored
from tests.store import old_rollups

INT64 = 2**63 - 1
FEB = datetime(2026, 2, 10, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def call(n: int, cost: int, team: str | None, at: datetime = FEB, key: str = "k1") -> LedgerEntry:
    return LedgerEntry(
        f"r{n}", "o1", team, None, None, key, [], "openai", "m1", "m1", "chat", False, "ok",
        200, 10, 1, 0, 0, 0, cost, False, False, 1, at, at,
    )  # fmt: skip


async def test_a_statement_total_past_int64_is_exact(engine: AsyncEngine) -> None:
    """Two calls of 5e18 nanos each: the org's month and the team's statement hold
    10^19 + 3 nanos (past 2^63 - 1), closed, stored and read back to the nano."""
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id="o1", name="big", created_at=FEB))
        await conn.execute(
            schema.teams.insert().values(id="t1", org_id="o1", name="t", created_at=FEB)
        )
        await store_batch(conn, [Pending(call(1, 5 * 10**18 + 1, "t1")),
                                 Pending(call(2, 5 * 10**18 + 2, "t1"))])  # fmt: skip
    total = 10**19 + 3
    assert total > INT64
    org = {"id": "o1", "name": "big", "reporting_timezone": "UTC"}
    async with engine.begin() as conn:
        issued = await close(engine, conn, org, "2026-02", "tester", FEB + timedelta(days=40))
    assert {r["team_id"]: r["total_nanos"] for r in issued} == {"": total, "t1": total}
    listed = await list_statements(engine, "o1", "2026-02", None)
    assert {r["team_id"]: r["total_nanos"] for r in listed} == {"": total, "t1": total}
    team = await stored(engine, "o1", "2026-02", "t1", None)
    assert team["total_nanos"] == total
    async with engine.connect() as conn:
        raw = (await conn.execute(sa.text(
            "SELECT total_whole_usd, total_rest_nanos FROM statements WHERE team_id = 't1'"
        ))).one()  # fmt: skip
    assert tuple(raw) == (10**10, 3)


@pytest.mark.empty_database
async def test_migration_0018_fills_the_narrow_rollup_and_splits_totals(
    engine: AsyncEngine,
) -> None:
    """Rollups and a statement stored before 0018: after it, the narrow rollup holds the
    wide one folded (to the nano, across a dollar carry) and the total is split."""
    await migrate(engine, "0017_tickets")
    rows = [call(n, 600_000_000 + n, "t1" if n % 2 else None,
                 FEB + timedelta(minutes=5 * n), f"k{n % 4}") for n in range(12)]  # fmt: skip
    main, tags = old_rollups.aggregate((int(r.started_at.timestamp()), r) for r in rows)
    async with engine.begin() as conn:
        await old_rollups.insert(conn, {"usage_rollup": main, "usage_tag_rollup": tags})
        await conn.execute(sa.text(
            "INSERT INTO statements (id, org_id, team_id, month, version, total_nanos, content, "
            "content_hash, created_by, created_at) VALUES ('s1', 'o1', '', '2026-02', 1, "
            f"{INT64}, '{{}}', 'h', 'tester', :at)"
        ), {"at": FEB})  # fmt: skip
    await migrate(engine)
    want = rollups.narrow(rollups.aggregate((int(r.started_at.timestamp()), r) for r in rows)[0])
    t = rollups.usage_team_rollup
    async with engine.connect() as conn:
        have = {
            tuple(r[:7]): rollups.logical([int(v) for v in r[7:]])
            for r in await conn.execute(sa.select(*t.columns))
        }
    assert have == want
    assert len(want) < len(main)  # users and keys folded away: fewer rows
    assert (await stored(engine, "o1", "2026-02", "", None))["total_nanos"] == INT64
