"""The daily rollup (``usage_team_daily``): read by reports over whole local days of the
org's daily zone, moved with a zone change, kept by the writer under concurrent zone
changes, and checked and repaired by the rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import showback as sb
from spendgate.store import rollups
from spendgate.store.daily import set_daily_zone
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import Pending, store_batch
from spendgate.store.rebuild import rebuild
from spendgate.store.rollups import usage_daily_zone, usage_team_daily
from spendgate.store.showback import usage_report
from tests.store import old_rollups
from tests.store.test_showback import row

KTM = "Asia/Kathmandu"
#: 1 March 2026 00:00 in Kathmandu (+5:45)
MARCH = datetime(2026, 3, 1, tzinfo=ZoneInfo(KTM))
APRIL = datetime(2026, 4, 1, tzinfo=ZoneInfo(KTM))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


async def _store(engine: AsyncEngine, org: str, first: int, times: list[datetime]) -> None:
    async with engine.begin() as conn:
        await store_batch(
            conn,
            [
                Pending(row(org, first + i, at, 1_000_000_007 * (first + i + 1)))
                for i, at in enumerate(times)
            ],
        )


async def _daily_rows(engine: AsyncEngine, org: str) -> dict[int, int]:
    d = usage_team_daily
    query = sa.select(d.c.day, d.c.cost_usd, d.c.cost_nanos).where(d.c.org_id == org)
    async with engine.connect() as conn:
        out: dict[int, int] = {}
        for day, whole, rest in await conn.execute(query):
            out[day] = out.get(day, 0) + whole * 10**9 + rest
    return out


def _days(times: list[datetime], zone: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, at in enumerate(times):
        day = (at.astimezone(ZoneInfo(zone)).date() - sb.EPOCH_DAY).days
        out[day] = out.get(day, 0) + 1_000_000_007 * (i + 1)
    return out


#: around Kathmandu's midnight (18:15 UTC) and New York's DST change (8 March 07:00 UTC)
TIMES = [
    datetime(2026, 3, 1, 18, 10, tzinfo=UTC),
    datetime(2026, 3, 1, 18, 20, tzinfo=UTC),
    datetime(2026, 3, 8, 6, 50, tzinfo=UTC),
    datetime(2026, 3, 8, 7, 10, tzinfo=UTC),
    datetime(2026, 3, 31, 18, 14, tzinfo=UTC),
]


async def test_reports_read_the_daily_rows_only_over_whole_days_in_their_zone(
    engine: AsyncEngine,
) -> None:
    """A planted change in a daily row shows in a month by day in the org's daily zone
    (so that report reads the daily rows), and not in one that cuts a day, one in
    another zone, or one by hour (they read the 15-minute rows)."""
    async with engine.begin() as conn:
        await set_daily_zone(conn, "od1", KTM)
    await _store(engine, "od1", 0, TIMES)
    assert await _daily_rows(engine, "od1") == _days(TIMES, KTM)
    clean = await usage_report(engine, ["day"], MARCH, APRIL, "od1", timezone=KTM)
    assert clean == await usage_report(
        engine, ["day"], MARCH, APRIL, "od1", timezone=KTM, daily=False
    )
    d = usage_team_daily
    async with engine.begin() as conn:
        await conn.execute(d.update().where(d.c.org_id == "od1").values(calls=d.c.calls + 1))
    planted = await usage_report(engine, ["day"], MARCH, APRIL, "od1", timezone=KTM)
    assert sum(r["requests"] for r in planted) == sum(r["requests"] for r in clean) + len(clean)
    cut = await usage_report(
        engine, ["day"], MARCH + timedelta(minutes=15), APRIL, "od1", timezone=KTM
    )
    assert sum(r["requests"] for r in cut) == len(TIMES)  # all five are after 00:15 on 1 March
    kolkata = await usage_report(engine, ["month"], MARCH, APRIL, "od1", timezone="Asia/Kolkata")
    assert sum(r["requests"] for r in kolkata) == len(TIMES)
    hours = await usage_report(engine, ["hour"], MARCH, APRIL, "od1", timezone=KTM)
    assert sum(r["requests"] for r in hours) == len(TIMES)


async def test_a_zone_change_refolds_the_days_and_later_batches_follow(engine: AsyncEngine) -> None:
    """Days of the old zone become days of the new one in the change's transaction;
    batches after it fold into the new zone; reports in the new zone read them and
    equal the 15-minute rows, in the old zone they no longer read them."""
    await _store(engine, "od2", 0, TIMES[:3])  # an org the writer first meets: UTC days
    assert await _daily_rows(engine, "od2") == _days(TIMES[:3], "UTC")
    async with engine.begin() as conn:
        assert await set_daily_zone(conn, "od2", "America/New_York")
        assert not await set_daily_zone(conn, "od2", "America/New_York")
    assert await _daily_rows(engine, "od2") == _days(TIMES[:3], "America/New_York")
    await _store(engine, "od2", 3, TIMES[3:])
    shifted = [*TIMES[:3], *TIMES[3:]]
    assert await _daily_rows(engine, "od2") == _days(shifted, "America/New_York")
    for zone in ("America/New_York", "UTC"):
        for grain in ("day", "week", "month"):
            fast = await usage_report(engine, [grain, "model"], None, None, "od2", timezone=zone)
            slow = await usage_report(
                engine, [grain, "model"], None, None, "od2", timezone=zone, daily=False
            )
            assert fast == slow and sum(r["requests"] for r in fast) == len(TIMES)


async def test_rebuild_finds_and_repairs_a_planted_daily_difference(engine: AsyncEngine) -> None:
    """A daily row changed behind the writer's back is one difference for a dry run
    (named by table, local day and zone) and put right by a real rebuild."""
    async with engine.begin() as conn:
        await set_daily_zone(conn, "od3", KTM)
    await _store(engine, "od3", 0, TIMES)
    window = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert (await rebuild(engine, *window, dry_run=True)).difference_count == 0
    d = usage_team_daily
    day = (datetime(2026, 3, 8, tzinfo=UTC).date() - sb.EPOCH_DAY).days
    async with engine.begin() as conn:
        await conn.execute(
            d.update()
            .where(d.c.org_id == "od3", d.c.day == day)
            .values(cost_nanos=d.c.cost_nanos + 7)
        )
    found = await rebuild(engine, *window, dry_run=True)
    assert found.difference_count == 1 and not found.fixed
    diff = found.differences[0]
    assert diff["table"] == "usage_team_daily" and diff["bucket_start"] == "2026-03-08"
    assert diff["timezone"] == KTM and diff["key"][0] == "od3"
    assert diff["rollup"]["cost_nanos"] == diff["ledger"]["cost_nanos"] + 7
    fixed = await rebuild(engine, *window)
    assert fixed.difference_count == 1 and fixed.fixed
    assert await _daily_rows(engine, "od3") == _days(TIMES, KTM)
    assert (await rebuild(engine, *window, dry_run=True)).difference_count == 0


@pytest.mark.empty_database
async def test_migration_0020_fills_the_daily_rows_in_each_orgs_zone(database_url: str) -> None:
    """Rollups written before 0020 (an org of the directory in Kathmandu, one the
    directory does not know): after it, each has a zone row and its days."""
    engine = create_engine(database_url)
    await migrate(engine, "0019_uncounted")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO orgs (id, name, created_at, reporting_timezone, week_start) "
                "VALUES ('om1', 'm1', :t, :z, 'monday')"
            ),
            {"t": now, "z": KTM},
        )
    for org in ("om1", "om2"):
        main, tags = old_rollups.aggregate(
            (int(at.timestamp()), row(org, i, at, 1_000_000_007 * (i + 1)))
            for i, at in enumerate(TIMES)
        )
        async with engine.begin() as conn:
            await old_rollups.insert(
                conn,
                {
                    "usage_rollup": main,
                    "usage_tag_rollup": tags,
                    "usage_team_rollup": rollups.narrow(main),
                },
            )
    await migrate(engine)
    assert await _daily_rows(engine, "om1") == _days(TIMES, KTM)
    assert await _daily_rows(engine, "om2") == _days(TIMES, "UTC")
    z = usage_daily_zone
    async with engine.connect() as conn:
        zones = dict((await conn.execute(sa.select(z.c.org_id, z.c.timezone))).all())
    assert zones == {"om1": KTM, "om2": "UTC"}
    await engine.dispose()


@pytest.mark.parametrize("first", ["batch", "zone change"])
async def test_a_batch_racing_a_zone_change_lands_in_the_new_zone(
    pg_database: str, first: str
) -> None:
    """PostgreSQL, two transactions at once: whichever takes the org's zone row first,
    the other waits for it, and the daily rows end up all in the new zone."""
    engine = create_engine(pg_database)
    await _store(engine, "od4", 0, TIMES[:2])
    batch = [
        Pending(row("od4", 2 + i, at, 1_000_000_007 * (3 + i))) for i, at in enumerate(TIMES[2:])
    ]
    async with engine.connect() as a, engine.connect() as b:
        tx_a, tx_b = await a.begin(), await b.begin()
        if first == "batch":
            await store_batch(a, batch)
            other = asyncio.create_task(set_daily_zone(b, "od4", KTM))
        else:
            await set_daily_zone(a, "od4", KTM)
            other = asyncio.create_task(store_batch(b, batch))
        await asyncio.sleep(0.3)
        assert not other.done()  # waiting on the zone row
        await tx_a.commit()
        await other
        await tx_b.commit()
    assert await _daily_rows(engine, "od4") == _days(TIMES, KTM)
    await engine.dispose()
