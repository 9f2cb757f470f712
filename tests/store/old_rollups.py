"""Rollup rows as the ledger writer wrote them before migration 0024 (or, given 0024's
token columns, before 0026): the same sums (``rollups.aggregate`` and its folds over
that revision's token columns), without ``cache_write_1h_tokens`` (before 0024) and the
estimated calls and cost (before 0026) — and ledger rows with the columns of an older
revision (:func:`insert_ledger`) — for tests that migrate from an older revision."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.store import rollups
from spendgate.store.ledger import LedgerEntry, sqlite_row
from spendgate.store.rebuild import rebuild

#: the token figures and stored sums of the rollups from 0013 to 0023
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "reasoning_tokens")  # fmt: skip
#: the token figures of the rollups from 0024 to 0025
TOKENS_0024 = (*TOKENS[:4], "cache_write_1h_tokens", TOKENS[4])
#: the ledger's columns at 0028 (before ``price_context``), from 0023 to 0027 (before
#: ``web_searches`` too), and before 0023 (before ``cache_write_1h_tokens`` too)
LEDGER_0028 = tuple(f for f in LedgerEntry._fields if f != "price_context")
LEDGER_0023 = tuple(f for f in LEDGER_0028 if f != "web_searches")
LEDGER_0022 = tuple(f for f in LEDGER_0023 if f != "cache_write_1h_tokens")
_WIDE = ("bucket", "org_id", "team_id", "user_id", "agent_id", "key_id", "provider", "model",
         "kind", "status")  # fmt: skip
KEYS = {
    "usage_rollup": (*_WIDE, "tags"),
    "usage_tag_rollup": (*_WIDE, "tag"),
    "usage_team_rollup": rollups.NARROW_KEY,
    "usage_team_daily": rollups.DAILY_KEY,
}


def aggregate(
    rows: Iterable[tuple[int, Any]], tokens: tuple[str, ...] = TOKENS
) -> tuple[rollups.Rollup, rollups.Rollup]:
    """The wide and tag rollups' rows of ``(epoch seconds, ledger row)`` pairs."""
    return rollups.aggregate(rows, tokens=tokens, estimates=False)


async def insert(
    conn: AsyncConnection, tables: dict[str, rollups.Rollup], tokens: tuple[str, ...] = TOKENS
) -> None:
    """Insert each table's rows (table name -> rollup rows) with the old columns."""
    stored = ("calls", *tokens, "cost_usd", "cost_nanos", "unpriced_calls")
    for table, rollup in tables.items():
        names = (*KEYS[table], *stored)
        statement = sa.text(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(f':{n}' for n in names)})"
        )
        values = [
            dict(zip(names, (*key, *rollups.stored(rollup[key], estimates=False)), strict=True))
            for key in sorted(rollup)
        ]
        if values:
            await conn.execute(statement, values)


async def insert_ledger(
    conn: AsyncConnection, calls: Iterable[LedgerEntry], fields: tuple[str, ...] = LEDGER_0023
) -> None:
    """Ledger rows as a writer of an older revision stored them: only ``fields``."""
    values = []
    for call in calls:
        if conn.dialect.name == "sqlite":
            values.append(dict(zip(LedgerEntry._fields, sqlite_row(call), strict=True)))
        else:
            values.append({**call._asdict(), "tags": orjson.dumps(call.tags).decode()})
    statement = sa.text(
        f"INSERT INTO ledger ({', '.join(fields)}) VALUES ({', '.join(f':{f}' for f in fields)})"
    )
    await conn.execute(statement, [{f: row[f] for f in fields} for row in values])


async def seed(
    conn: AsyncConnection,
    calls: Sequence[LedgerEntry],
    zone: str,
    created: datetime,
    tokens: tuple[str, ...] = TOKENS,
) -> None:
    """Org ``om1`` (reporting and daily zone ``zone``), ``calls`` in its ledger and their
    rows in all four rollups, as a writer of the revision whose rollups sum ``tokens``
    left them (the ledger with the columns of 0023 to 0027)."""
    main, tags = aggregate(((int(c.started_at.timestamp()), c) for c in calls), tokens)
    teams = rollups.narrow(main)
    await conn.execute(
        sa.text(
            "INSERT INTO orgs (id, name, created_at, reporting_timezone, week_start) "
            "VALUES ('om1', 'm1', :t, :z, 'monday')"
        ),
        {"t": created, "z": zone},
    )
    await conn.execute(
        sa.text("INSERT INTO usage_daily_zone (org_id, timezone) VALUES ('om1', :z)"), {"z": zone}
    )
    await insert_ledger(conn, calls)
    tables = {
        "usage_rollup": main,
        "usage_tag_rollup": tags,
        "usage_team_rollup": teams,
        "usage_team_daily": rollups.daily(teams, {"om1": zone}),
    }
    await insert(conn, tables, tokens)


async def tamper_and_repair(
    engine: AsyncEngine, column: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """``column`` of ``om1``'s daily rows without a team raised by 1 behind the writer's
    back: a dry-run rebuild of ``[start, end)`` finds that one difference (returned), a
    rebuild puts it right, and the next dry run finds none."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"UPDATE usage_team_daily SET {column} = {column} + 1"
                " WHERE org_id = 'om1' AND team_id = ''"
            )
        )
    found = await rebuild(engine, start, end, dry_run=True)
    assert found.difference_count == 1
    [diff] = found.differences
    assert diff["table"] == "usage_team_daily"
    assert (await rebuild(engine, start, end)).fixed
    assert (await rebuild(engine, start, end, dry_run=True)).difference_count == 0
    return diff


async def covered_sums(engine: AsyncEngine) -> list[str]:
    """PostgreSQL: what the narrow and daily rollups' primary keys INCLUDE (SQLite: none,
    their tables are the primary key)."""
    if engine.dialect.name != "postgresql":
        return []
    out = []
    async with engine.connect() as conn:
        for table in ("usage_team_rollup", "usage_team_daily"):
            index = await conn.execute(
                sa.text("SELECT pg_get_indexdef(CAST(:pk AS regclass))"), {"pk": f"pk_{table}"}
            )
            out.append(str(index.scalar()).split("INCLUDE")[1])
    return out
