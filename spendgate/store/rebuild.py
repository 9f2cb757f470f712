"""Rollups recomputed from the ledger, and the raw ledger purged past its retention.

**Rebuild.** ``rebuild`` reads the ledger rows of ``[start, end)`` a chunk of days at a
time, sums them with the writer's own ``rollups.aggregate``, compares the result with
the stored rollup rows of those buckets, reports every difference, and (unless
``dry_run``) replaces the chunk's rollup rows in the same transaction. Each chunk first
takes the rollup tables' write lock (PostgreSQL: ``LOCK … IN EXCLUSIVE MODE``; SQLite:
its one write lock), so a ledger batch committing meanwhile is either seen whole in the
ledger or adds its rows to the rollups after the chunk is replaced — never lost, never
twice.

**Retention.** ``purge_ledger`` deletes ledger rows older than ``before`` and records
that instant in ``ledger_retention``: a rebuild that would reach into purged time is
refused, since it would wipe rollups the ledger can no longer back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core import showback as sb
from spendgate.errors import ValidationFailed
from spendgate.store import rollups, schema
from spendgate.store.showback_schema import ledger_retention

CHUNK = timedelta(days=7)
#: differences listed in a report (all are counted)
LISTED = 100
_LEDGER_COLUMNS = (
    "org_id",
    "team_id",
    "user_id",
    "agent_id",
    "key_id",
    "tags",
    "provider",
    "model",
    "kind",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "price_unknown",
    "started_at",
)


@dataclass
class RebuildReport:
    start: datetime
    end: datetime
    ledger_rows: int = 0
    rollup_rows: int = 0
    difference_count: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    fixed: bool = False


class _Row:
    __slots__ = ("_row", "tags")

    def __init__(self, row: Any) -> None:
        self._row = row
        tags = row.tags
        self.tags = orjson.loads(tags) if isinstance(tags, str | bytes) else list(tags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


async def purged_before(engine: AsyncEngine | AsyncConnection) -> datetime | None:
    query = sa.select(ledger_retention.c.purged_before).where(ledger_retention.c.id == 1)
    if isinstance(engine, AsyncConnection):
        return (await engine.execute(query)).scalar()
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar()


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            sa.text("LOCK TABLE usage_rollup, usage_tag_rollup, usage_team_rollup IN EXCLUSIVE MODE")
        )
    else:  # any write takes SQLite's one write lock for the rest of the transaction
        await conn.execute(sa.text("DELETE FROM usage_rollup WHERE bucket < 0"))


async def _stored(conn: AsyncConnection, table: sa.Table, lo: int, hi: int) -> rollups.Rollup:
    keys = [c for c in table.columns if c.primary_key]
    sums = [table.c[c] for c in rollups.STORED_COLUMNS]
    rows = await conn.execute(
        sa.select(*keys, *sums).where(table.c.bucket >= lo, table.c.bucket < hi)
    )
    width = len(keys)
    return {tuple(r[:width]): rollups.logical([int(v) for v in r[width:]]) for r in rows}


def _compare(
    table: sa.Table, want: rollups.Rollup, have: rollups.Rollup, report: RebuildReport
) -> bool:
    at = [c.name for c in table.primary_key.columns].index("bucket")
    same = True
    for key in sorted(want.keys() | have.keys()):
        ledger, stored = want.get(key), have.get(key)
        if ledger == stored:
            continue
        same = False
        report.difference_count += 1
        if len(report.differences) < LISTED:
            report.differences.append(
                {
                    "table": table.name,
                    "bucket_start": sb.bucket_start(key[at]).isoformat(),
                    "key": [*key[:at], *key[at + 1 :]],
                    "ledger": dict(zip(rollups.SUM_COLUMNS, ledger or [], strict=False)),
                    "rollup": dict(zip(rollups.SUM_COLUMNS, stored or [], strict=False)),
                }
            )
    return same


async def _chunk(
    conn: AsyncConnection, lo: datetime, hi: datetime, dry_run: bool, report: RebuildReport
) -> None:
    ledger = schema.ledger
    rows = await conn.stream(
        sa.select(*(ledger.c[c] for c in _LEDGER_COLUMNS)).where(
            ledger.c.started_at >= lo, ledger.c.started_at < hi
        )
    )
    main: rollups.Rollup = {}
    tags: rollups.Rollup = {}
    async for part in rows.partitions(5000):
        rollups.aggregate(((int(r.started_at.timestamp()), _Row(r)) for r in part), main, tags)
        report.ledger_rows += len(part)
    b_lo, b_hi = sb.bucket_of(lo), sb.bucket_of(hi)
    same = True
    teams = rollups.narrow(main)
    pairs = ((rollups.usage_rollup, main), (rollups.usage_tag_rollup, tags),
             (rollups.usage_team_rollup, teams))  # fmt: skip
    for table, want in pairs:
        have = await _stored(conn, table, b_lo, b_hi)
        report.rollup_rows += len(have) if table is rollups.usage_rollup else 0
        same = _compare(table, want, have, report) and same
    if same or dry_run:
        return
    for table, _ in pairs:
        await conn.execute(table.delete().where(table.c.bucket >= b_lo, table.c.bucket < b_hi))
    for statement, values in rollups.write_statements(conn.dialect.name, main, tags, teams):
        for at in range(0, len(values), 5000):
            await conn.execute(statement, values[at : at + 5000])
    report.fixed = True


async def rebuild(
    engine: AsyncEngine, start: datetime, end: datetime, *, dry_run: bool = False
) -> RebuildReport:
    """Recompute the rollups of ``[start, end)`` (quarter-hour bounds) from the ledger;
    report the differences and, unless ``dry_run``, put the ledger's figures in place."""
    gone = await purged_before(engine)
    if gone is not None and start < gone:
        raise ValidationFailed(
            f"start: ledger rows before {gone.isoformat()} were purged (retention); "
            "their rollups cannot be rebuilt",
            param="start",
        )
    report = RebuildReport(start, end)
    lo = start
    while lo < end:
        hi = min(lo + CHUNK, end)
        async with engine.begin() as conn:
            await _lock(conn)
            await _chunk(conn, lo, hi, dry_run, report)
        lo = hi
    return report


async def purge_ledger(engine: AsyncEngine, before: datetime) -> int:
    """Delete raw ledger rows that started before ``before`` (rollups and statements
    stay) and remember the instant; returns the rows deleted."""
    ledger = schema.ledger
    async with engine.begin() as conn:
        deleted = (await conn.execute(ledger.delete().where(ledger.c.started_at < before))).rowcount
        known = await purged_before(conn)
        if known is None:
            await conn.execute(ledger_retention.insert().values(id=1, purged_before=before))
        elif known < before:
            await conn.execute(
                ledger_retention.update()
                .where(ledger_retention.c.id == 1)
                .values(purged_before=before)
            )
    return int(deleted or 0)
