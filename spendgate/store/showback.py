"""Usage reports, answered from the rollups (``spendgate.store.rollups``), never the ledger.

Which rollup: :func:`rollup_for` — the narrow ``usage_team_rollup`` whenever the report
neither groups nor filters by user, agent, key or tag (the common case: by team, model,
provider, day), otherwise the wide or the tag rollup. A narrow report by day, week or
month reads the daily ``usage_team_daily`` instead when it answers exactly the same
(:func:`_daily_days`): the report's zone is the daily zone of every org in scope, and
``start`` and ``end`` fall on local midnights of that zone (a range cutting a day is
answered from the 15-minute rows, as before).

``usage_report`` is the one entry point: ``/admin/usage``, ``spendgate usage``, the
console and the statements all call it. Time grains are local to ``timezone``: the
database groups by *local* hour or day (``spendgate.core.showback``: bucket plus the
zone's offset, one ``CASE`` over the few offset changes in range), and weeks and months
are folded from local days here. Every bucket lands in exactly one period, so the
periods of a report always add up to its total.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import showback as sb
from spendgate.store.cost_sums import COST_REST, COST_WHOLE
from spendgate.store.rollups import (
    NANOS,
    NARROW_DIMENSIONS,
    TOKEN_COLUMNS,
    usage_daily_zone,
    usage_rollup,
    usage_tag_rollup,
    usage_team_daily,
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
#: rows read from the driver at a time
CHUNK_ROWS = 1000
#: the figures of a report row: the token figures are the rollups' own columns
#: (``rollups.TOKEN_COLUMNS``, ``cache_write_1h_tokens`` the 1-hour part of
#: ``cache_write_tokens``, ``web_searches`` the searches billed; the admin CSV puts the
#: latter last, ``admin.usage.CSV_LAST``); ``estimated_calls`` of the calls billed on an
#: estimate and ``estimated_nanos`` their cost, part of ``cost_nanos``
#: (``rollups.ESTIMATE_COLUMNS``)
MEASURES = ("requests", "errors", *TOKEN_COLUMNS, "cost_nanos", "unpriced_requests",
            "estimated_calls", "estimated_nanos")  # fmt: skip
#: where the costs are among them (each read as two columns: whole dollars, then the
#: nanos), in order
_MONEY_AT = (MEASURES.index("cost_nanos"), MEASURES.index("estimated_nanos"))


def _measures(t: sa.Table, dialect: str) -> list[sa.ColumnElement[Any]]:
    # PostgreSQL: sg_sum8 (migration 0021), BIGINT's own ``+``, since its ``sum(bigint)``
    # adds in 128 bits and returns NUMERIC, which cost most of a month report's
    # aggregation; SQLite's sum of integers is a 64-bit integer already
    add = sa.func.sg_sum8 if dialect == "postgresql" else sa.func.sum

    def total(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[Any]:
        return sa.cast(sa.func.coalesce(add(column), 0), sa.BigInteger()).label(name)

    return [
        total(t.c.calls, "requests"),
        total(sa.case((t.c.status == "ok", 0), else_=t.c.calls), "errors"),
        *(total(t.c[c], c) for c in TOKEN_COLUMNS),
        total(t.c.cost_usd, COST_WHOLE),
        total(t.c.cost_nanos, COST_REST),
        total(t.c.unpriced_calls, "unpriced_requests"),
        total(t.c.estimated_calls, "estimated_calls"),
        total(t.c.estimated_usd, "estimated_whole_usd"),
        total(t.c.estimated_nanos, "estimated_rest_nanos"),
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


def _daily_days(
    start: datetime | None, end: datetime | None, timezone: str
) -> tuple[int | None, int | None] | None:
    """The local days ``[first, end)`` that make up ``[start, end)`` in ``timezone``
    (None: unbounded), or None when a bound cuts a local day or no whole day is left."""
    first = last = None
    if start is not None:
        first = sb.day_boundary(sb.bucket_of(start), timezone)
        if first is None:
            return None
    if end is not None:
        last = sb.day_boundary(sb.bucket_of(end), timezone)
        if last is None:
            return None
    if first is not None and last is not None and last <= first:
        return None
    return first, last


def _daily_guard(
    org_id: str | None, filters: Mapping[str, Collection[str | None]], timezone: str
) -> sa.ColumnElement[bool]:
    """True when every org the report can see has its daily rows in ``timezone``:
    evaluated in the report's own query, so in the same snapshot as the rows it reads
    (a zone change committing meanwhile cannot slip between)."""
    z = usage_daily_zone
    scope = {org_id} if org_id is not None else set()
    if "org" in filters:
        named = {v for v in filters["org"] if v}
        scope = scope & named if org_id is not None else named
    if org_id is None and "org" not in filters:  # every org
        other = sa.select(z.c.org_id).where(z.c.timezone != timezone)
        return ~sa.exists(other)
    if not scope:
        return sa.false()
    same = (
        sa.select(sa.func.count())
        .select_from(z)
        .where(z.c.org_id.in_(sorted(scope)), z.c.timezone == timezone)
        .scalar_subquery()
    )
    return same == len(scope)


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
    daily: bool = True,
) -> list[dict[str, Any]]:
    """Spend over ``[start, end)`` (None: unbounded; a bound off the quarter hour is
    taken down to its bucket — the admin API refuses such bounds) grouped by
    ``group_by`` (dimensions of ``core.showback.DIMENSIONS`` and at most one grain of
    ``GRAINS``, local to ``timezone``); ``team_ids`` limits it to those teams (a team
    role's view), ``filters`` to the given values of each dimension (``None``: absent).
    ``top``: keep the N costliest groups and fold the rest into an ``"other"`` row;
    ``cumulative``: each row also carries its group's running ``cumulative_cost_nanos``;
    ``user_id``: one user's calls only (a member's own view in the console).
    ``daily=False``: never the daily rollup (the tests compare both paths).
    A call with several tags counts once under each of them when grouped by tag.

    Rows come in the order of their groups' names (period, then each dimension, an
    absent one named ``None``), sorted by the database for hours, days and no grain."""
    filters = dict(filters or {})
    if user_id is not None:
        filters["user"] = [user_id]
    grains = [g for g in group_by if g in sb.GRAINS]
    dims = [g for g in group_by if g in sb.DIMENSIONS]
    if len(grains) > 1 or len(grains) + len(dims) != len(group_by):
        raise ValueError(f"group_by: at most one of {', '.join(sb.GRAINS)} and known dimensions")
    grain = grains[0] if grains else None
    t = rollup_for(dims, filters)
    if daily and t is usage_team_rollup and grain in ("day", "week", "month"):
        days = _daily_days(start, end, timezone)
        if days is not None:
            rows = await _daily_report(
                engine, grain, dims, days, org_id, team_ids, filters, timezone, week_start
            )
            if rows is not None:
                return _finish(rows, dims, grain, top, cumulative)
    where = _where(t, start, end, org_id, team_ids, filters)
    keys: list[sa.ColumnElement[Any]] = [t.c[COLUMN_OF[d]] for d in dims]
    shown: list[sa.ColumnElement[Any]] = [
        sa.func.nullif(k, "").label(d) for k, d in zip(keys, dims, strict=True)
    ]
    if grain is not None:
        if start is not None and end is not None:
            span: tuple[int, int] | None = (sb.bucket_of(start), sb.bucket_of(end))
        else:
            span = await _bucket_range(engine, t, where)
        if span is None:
            return []
        segments = sb.offset_segments(*span, timezone)
        per = sb.BUCKETS_PER_HOUR if grain == "hour" else sb.BUCKETS_PER_DAY
        unit = (_local_bucket(t, segments) // per).label("_unit")
        keys.insert(0, unit)
        shown.insert(0, unit)
    folded = grain in ("week", "month")  # days folded into weeks or months here
    query = sa.select(*shown, *_measures(t, engine.dialect.name)).where(*where)
    if keys:
        query = query.group_by(*keys)
        if not folded:
            query = query.order_by(*_name_order(keys, engine.dialect.name, grain is not None))
    names = (*grains, *dims, *MEASURES)
    rows, _ = await _read(engine, query, grain, week_start, names, folded)
    return _finish(rows, dims, grain, top, cumulative)


def _finish(
    rows: list[dict[str, Any]],
    dims: Sequence[str],
    grain: sb.Grain | None,
    top: int,
    cumulative: bool,
) -> list[dict[str, Any]]:
    rows = sb.fold_top(rows, dims, grain, top)
    if cumulative and grain is not None:
        rows = sb.add_cumulative(rows, dims, grain)
    return rows


async def _daily_report(
    engine: AsyncEngine,
    grain: sb.Grain,
    dims: Sequence[str],
    days: tuple[int | None, int | None],
    org_id: str | None,
    team_ids: Collection[str] | None,
    filters: Mapping[str, Collection[str | None]],
    timezone: str,
    week_start: str,
) -> list[dict[str, Any]] | None:
    """The report from ``usage_team_daily``: its rows are local days already, so the
    database sums a row per day x group. None (read the 15-minute rows instead) when an
    org in scope has its daily rows in another zone — or when there is no row at all,
    since a failed guard also reads as no row."""
    d = usage_team_daily
    where = _where(d, None, None, org_id, team_ids, filters)
    if days[0] is not None:
        where.append(d.c.day >= days[0])
    if days[1] is not None:
        where.append(d.c.day < days[1])
    where.append(_daily_guard(org_id, filters, timezone))
    unit = d.c.day.label("_unit")
    keys: list[sa.ColumnElement[Any]] = [unit, *(d.c[COLUMN_OF[dim]] for dim in dims)]
    shown: list[sa.ColumnElement[Any]] = [
        unit,
        *(sa.func.nullif(d.c[COLUMN_OF[dim]], "").label(dim) for dim in dims),
    ]
    query = sa.select(*shown, *_measures(d, engine.dialect.name)).where(*where).group_by(*keys)
    folded = grain != "day"
    if not folded:
        query = query.order_by(*_name_order(keys, engine.dialect.name, True))
    names = (grain, *dims, *MEASURES)
    rows, read = await _read(engine, query, grain, week_start, names, folded)
    return rows if read else None


async def _read(
    engine: AsyncEngine,
    query: sa.Select[Any],
    grain: sb.Grain | None,
    week_start: str,
    names: Sequence[str],
    folded: bool,
) -> tuple[list[dict[str, Any]], int]:
    """The report rows of ``query`` (``[unit], *dimensions, *sums`` with the cost in two
    columns), shaped a chunk at a time as they are read — days folded into weeks or
    months when ``folded`` — and how many rows the query returned."""
    labels: dict[int, str] = {}
    if folded:
        assert grain is not None
        merged: dict[tuple[Any, ...], list[int]] = {}
        read = await _fetch(
            engine, query, lambda chunk: _fold_days(chunk, grain, week_start, names, labels, merged)
        )
        return _folded_rows(merged, names), read
    rows: list[dict[str, Any]] = []
    read = await _fetch(
        engine,
        query,
        lambda chunk: rows.extend(report_rows(chunk, grain, week_start, names, labels)),
    )
    return rows, read


async def _fetch(
    engine: AsyncEngine, query: sa.Select[Any], consume: Callable[[Sequence[Sequence[Any]]], None]
) -> int:
    """Run ``query``, handing its rows to ``consume`` a chunk at a time as the driver reads
    them (asyncpg records, sqlite3 tuples); returns how many there were.

    Each chunk is shaped as it comes: a report's tens of thousands of rows never live as
    row objects all at once (the garbage collector's passes over the records a whole
    result kept alive cost more than shaping them), and no SQLAlchemy row objects (they
    cost more than decoding). A report's parameters are integers and strings: the driver
    takes them as they are."""
    read = 0
    async with engine.connect() as conn:
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = [compiled.params[name] for name in compiled.positiontup or ()]
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        if conn.dialect.name == "postgresql":
            async with driver.transaction(readonly=True):
                # a month by team x model x day is tens of thousands of groups: hash
                # them in memory rather than sort them on disk (this transaction only)
                await driver.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
                cursor = await driver.cursor(str(compiled), *params)
                while chunk := await cursor.fetch(CHUNK_ROWS):
                    read += len(chunk)
                    consume(chunk)
        else:
            cursor = await driver.execute(str(compiled), params)
            try:
                while chunk := await cursor.fetchmany(CHUNK_ROWS):
                    read += len(chunk)
                    consume(chunk)
            finally:
                await cursor.close()
    return read


def _name_order(
    keys: Sequence[sa.ColumnElement[Any]], dialect: str, has_unit: bool
) -> list[sa.ColumnElement[Any]]:
    """ORDER BY terms sorting groups as Python sorts their names: a local hour's or day's
    number sorts as its label; a dimension as its text by code point (PostgreSQL's
    ``"C"`` collation, SQLite's ``BINARY``), an absent one as ``"None"``."""
    out: list[sa.ColumnElement[Any]] = [keys[0]] if has_unit else []
    for key in keys[int(has_unit) :]:
        name: sa.ColumnElement[Any] = sa.func.coalesce(sa.func.nullif(key, ""), "None")
        out.append(sa.collate(name, "C") if dialect == "postgresql" else name)
    return out


def _label(
    rows: Sequence[Sequence[Any]], grain: sb.Grain, week_start: str, labels: dict[int, str]
) -> None:
    """Put the name of each period unit of ``rows`` (their first value) in ``labels``."""
    for unit in {row[0] for row in rows}.difference(labels):
        labels[unit] = sb.period_label(grain, unit, week_start)


def report_rows(
    rows: Sequence[Sequence[Any]],
    grain: sb.Grain | None,
    week_start: str,
    names: Sequence[str],
    labels: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Report rows from the query's rows (``[unit], *dimensions, *sums``, a row per
    group, in order): the unit named (``labels``: names known already, added to), the cost
    put together from its whole dollars and nanos, a group with no calls left out."""
    if grain is not None:
        labels = {} if labels is None else labels
        _label(rows, grain, week_start, labels)
    return _row_maker(tuple(names), grain is not None)(rows, labels)


@cache
def _row_maker(
    names: tuple[str, ...], labelled: bool
) -> Callable[[Iterable[Sequence[Any]], Mapping[int, str] | None], list[dict[str, Any]]]:
    """``report_rows``' one pass over the query's rows, generated once per set of names
    (as ``collections.namedtuple`` generates its class): a comprehension unpacking each
    row and writing its dict as a display::

        [{"day": labels[v0], "team": v1, …, "cost_nanos": v10 * NANOS + v11, …}
         for v0, …, v12 in rows if v3]

    Half the CPU of shaping column by column and zipping names to values (a month by team
    x model x day at 10M ledger rows: ~25 -> ~12 ms for 18,520 rows). ``names`` are a
    grain's, dimensions' and ``MEASURES`` (checked: identifiers), written by ``repr``."""
    if not all(name.isidentifier() for name in names) or tuple(names[-len(MEASURES) :]) != MEASURES:
        raise ValueError(f"report columns: {names!r}")
    width = len(names) - len(MEASURES)
    values = [f"v{i}" for i in range(len(names) + len(_MONEY_AT))]  # costs in two columns
    shown = _joined(values[width:], lambda whole, rest: f"{whole} * {NANOS} + {rest}")
    shown = [*values[:width], *shown]
    if labelled:
        shown[0] = f"labels[{values[0]}]"
    display = ", ".join(f"{name!r}: {v}" for name, v in zip(names, shown, strict=True))
    source = (
        f"lambda rows, labels: [{{{display}}} for {', '.join(values)} in rows if {values[width]}]"
    )
    return eval(source, {})  # type: ignore[no-any-return]


def _fold_days(
    rows: Sequence[Sequence[Any]],
    grain: sb.Grain,
    week_start: str,
    names: Sequence[str],
    labels: dict[int, str],
    merged: dict[tuple[Any, ...], list[int]],
) -> None:
    """Add the query's local days (``rows``) into ``merged``, by week or month and group."""
    _label(rows, grain, week_start, labels)
    width = len(names) - len(MEASURES)
    for row in rows:
        if not row[width]:  # no calls
            continue
        key = (labels[row[0]], *row[1:width])
        into = merged.get(key)
        if into is None:
            merged[key] = list(row[width:])
        else:
            for i, value in enumerate(row[width:]):
                into[i] += value


def _folded_rows(
    merged: dict[tuple[Any, ...], list[int]], names: Sequence[str]
) -> list[dict[str, Any]]:
    """Weeks or months folded from the query's local days (``_fold_days``), sorted by their
    names."""
    rows: list[dict[str, Any]] = []
    for key in sorted(merged, key=lambda k: tuple(map(str, k))):
        sums = _joined(merged[key], lambda whole, rest: whole * NANOS + rest)
        rows.append(dict(zip(names, (*key, *sums), strict=True)))
    return rows


def _joined(sums: Sequence[Any], join: Callable[[Any, Any], Any]) -> list[Any]:
    """The query's sums (``MEASURES`` with each cost in two columns, whole dollars and
    nanos) with each cost's two put together by ``join``."""
    out: list[Any] = []
    at = 0  # in ``sums``
    for money in _MONEY_AT:  # in ``MEASURES``, so in ``out``
        take = money - len(out)
        out.extend(sums[at : at + take])
        out.append(join(sums[at + take], sums[at + take + 1]))
        at += take + 2
    out.extend(sums[at:])
    return out
