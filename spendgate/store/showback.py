"""Usage reports, answered from the rollups (``spendgate.store.rollups``), never the ledger.

Which rollup: :func:`rollup_for` — the narrow ``usage_team_rollup`` whenever the report
neither groups nor filters by user, agent, key or tag (the common case: by team, model,
provider, day), otherwise the wide or the tag rollup.

``usage_report`` is the one entry point: ``/admin/usage``, ``spendgate usage``, the
console and the statements all call it. Time grains are local to ``timezone``: the
database groups by *local* hour or day (``spendgate.core.showback``: bucket plus the
zone's offset, one ``CASE`` over the few offset changes in range), and weeks and months
are folded from local days here. Every bucket lands in exactly one period, so the
periods of a report always add up to its total.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import showback as sb
from spendgate.store.cost_sums import COST_REST, COST_WHOLE, cost_from_sums
from spendgate.store.rollups import (
    NARROW_DIMENSIONS,
    usage_rollup,
    usage_tag_rollup,
    usage_team_rollup,
)

COLUMN_OF = {
    "org": "org_id",
    "team": "team_id",
    "user": "user_id",
    "agent": "agent_id",
    "key": "key_id",
    "tag": "tag",
    "provider": "provider",
    "model": "model",
    "kind": "kind",
    "status": "status",
}
#: PostgreSQL ``work_mem`` of a report's transaction
WORK_MEM = "64MB"
#: the figures of a report row, in CSV order
MEASURES = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "unpriced_requests",
)


def _measures(t: sa.Table) -> list[sa.ColumnElement[Any]]:
    def total(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[Any]:
        # BIGINT: PostgreSQL's SUM of a bigint is NUMERIC, decoded into slow Decimals
        return sa.cast(sa.func.coalesce(sa.func.sum(column), 0), sa.BigInteger()).label(name)

    return [
        total(t.c.calls, "requests"),
        total(sa.case((t.c.status == "ok", 0), else_=t.c.calls), "errors"),
        *(
            total(t.c[c], c)
            for c in (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "reasoning_tokens",
            )
        ),
        total(t.c.cost_usd, COST_WHOLE),
        total(t.c.cost_nanos, COST_REST),
        total(t.c.unpriced_calls, "unpriced_requests"),
    ]


def _local_bucket(t: sa.Table, segments: Sequence[sb.Segment]) -> sa.ColumnElement[Any]:
    if len(segments) == 1:
        return t.c.bucket + segments[0].offset
    whens = [(t.c.bucket < s.end, s.offset) for s in segments[:-1]]
    return t.c.bucket + sa.case(*whens, else_=segments[-1].offset)


def _where(
    t: sa.Table,
    start: datetime | None,
    end: datetime | None,
    org_id: str | None,
    team_ids: Collection[str] | None,
    filters: Mapping[str, Collection[str | None]],
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if start is not None:
        where.append(t.c.bucket >= sb.bucket_of(start))
    if end is not None:
        where.append(t.c.bucket < sb.bucket_of(end))
    if org_id is not None:
        where.append(t.c.org_id == org_id)
    if team_ids is not None:
        where.append(t.c.team_id.in_(sorted(team_ids)))
    for dim, values in filters.items():
        where.append(t.c[COLUMN_OF[dim]].in_(sorted(v or "" for v in values)))
    return where


async def _bucket_range(
    engine: AsyncEngine, t: sa.Table, where: list[sa.ColumnElement[bool]]
) -> tuple[int, int] | None:
    query = sa.select(sa.func.min(t.c.bucket), sa.func.max(t.c.bucket)).where(*where)
    async with engine.connect() as conn:
        low, high = (await conn.execute(query)).one()
    return None if low is None else (int(low), int(high) + 1)


def rollup_for(dims: Collection[str], filters: Collection[str]) -> sa.Table:
    """The rollup a report reads: the narrow one when it names no user, agent, key or
    tag (a few rows per bucket), the tag rollup when it names a tag, else the wide one."""
    named = {*dims, *filters}
    if named <= NARROW_DIMENSIONS:
        return usage_team_rollup
    return usage_tag_rollup if "tag" in named else usage_rollup


async def usage_report(
    engine: AsyncEngine,
    group_by: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    org_id: str | None = None,
    *,
    team_ids: Collection[str] | None = None,
    timezone: str = "UTC",
    week_start: str = "monday",
    filters: Mapping[str, Collection[str | None]] | None = None,
    top: int = 0,
    cumulative: bool = False,
    user_id: str | None = None,
) -> list[dict[str, Any]]:
    """Spend over ``[start, end)`` (None: unbounded; a bound off the quarter hour is
    taken down to its bucket — the admin API refuses such bounds) grouped by
    ``group_by`` (dimensions of ``core.showback.DIMENSIONS`` and at most one grain of
    ``GRAINS``, local to ``timezone``); ``team_ids`` limits it to those teams (a team
    role's view), ``filters`` to the given values of each dimension (``None``: absent).
    ``top``: keep the N costliest groups and fold the rest into an ``"other"`` row;
    ``cumulative``: each row also carries its group's running ``cumulative_cost_nanos``;
    ``user_id``: one user's calls only (a member's own view in the console).
    A call with several tags counts once under each of them when grouped by tag."""
    filters = dict(filters or {})
    if user_id is not None:
        filters["user"] = [user_id]
    grains = [g for g in group_by if g in sb.GRAINS]
    dims = [g for g in group_by if g in sb.DIMENSIONS]
    if len(grains) > 1 or len(grains) + len(dims) != len(group_by):
        raise ValueError(f"group_by: at most one of {', '.join(sb.GRAINS)} and known dimensions")
    grain = grains[0] if grains else None
    t = rollup_for(dims, filters)
    where = _where(t, start, end, org_id, team_ids, filters)
    columns: list[sa.ColumnElement[Any]] = [t.c[COLUMN_OF[d]].label(d) for d in dims]
    if grain is not None:
        if start is not None and end is not None:
            span: tuple[int, int] | None = (sb.bucket_of(start), sb.bucket_of(end))
        else:
            span = await _bucket_range(engine, t, where)
        if span is None:
            return []
        segments = sb.offset_segments(*span, timezone)
        per = sb.BUCKETS_PER_HOUR if grain == "hour" else sb.BUCKETS_PER_DAY
        columns.insert(0, (_local_bucket(t, segments) // per).label("_unit"))
    query = sa.select(*columns, *_measures(t)).where(*where)
    if columns:
        query = query.group_by(*columns)
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # a month by team x model x day is tens of thousands of groups: hash them in
            # memory rather than sort them on disk (this transaction only)
            await conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
        result = (await conn.execute(query)).all()
    width = len(columns)
    labels: dict[int, str] = {}
    merged: dict[tuple[Any, ...], list[int]] = {}
    for row in result:
        if not row[width]:  # no calls
            continue
        if grain is None:
            key = tuple(v or None for v in row[:width])
        else:
            unit = int(row[0])
            label = labels.get(unit)
            if label is None:
                label = labels[unit] = sb.period_label(grain, unit, week_start)
            key = (label, *(v or None for v in row[1:width]))
        figures = [int(v) for v in row[width:]]
        into = merged.get(key)
        if into is None:
            merged[key] = figures
        else:  # a week or month folded from its days
            for i, value in enumerate(figures):
                into[i] += value
    names = [*grains, *dims]
    rows: list[dict[str, Any]] = []
    for key in sorted(merged, key=lambda k: tuple(map(str, k))):
        f = merged[key]
        rows.append(
            {**dict(zip(names, key, strict=True)), **dict(zip(MEASURES[:7], f, strict=False)),
             "cost_nanos": cost_from_sums(f[7], f[8]), "unpriced_requests": f[9]}
        )  # fmt: skip
    rows = sb.fold_top(rows, dims, grain, top)
    if cumulative and grain is not None:
        rows = sb.add_cumulative(rows, dims, grain)
    return rows
