"""Rollups recomputed from the ledger, and the raw ledger purged past its retention.

**Rebuild.** ``rebuild`` goes over ``[start, end)`` a chunk of days at a time, set-based:
the database sums the chunk's ledger rows into each rollup's rows (one ``GROUP BY`` into
a temporary table, the same sums as the writer's ``rollups.aggregate``; the narrow
rollup folded from the wide one's, as the writer folds it), compares them with the
stored rows of those buckets (an ``EXCEPT`` each way, into a temporary table of the
differences), reports the differences (all counted, the first ``LISTED`` in key order
listed), and (unless ``dry_run``) deletes the stored rows that differ and inserts the
ledger's in the same transaction (``DELETE … WHERE (key) IN (SELECT …)``, ``INSERT …
SELECT``): rows already right are not touched, and Python never holds a rollup row.
The daily rollup goes the same way per local day of each org's zone. Each chunk first
takes the rollup tables' write lock (PostgreSQL: ``LOCK … IN EXCLUSIVE MODE``; SQLite:
its one write lock), so a ledger batch committing meanwhile is either seen whole in the
ledger or adds its rows to the rollups after the chunk is replaced — never lost, never
twice.

**Retention.** ``purge_ledger`` deletes ledger rows older than ``before`` and records
that instant in ``ledger_retention``: a rebuild that would reach into purged time is
refused, since it would wipe rollups the ledger can no longer back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core import showback as sb
from spendgate.errors import ValidationFailed
from spendgate.store import daily, rollups, schema
from spendgate.store.database import SQLITE_TAG_SET
from spendgate.store.showback_schema import ledger_retention

CHUNK = timedelta(days=7)
#: what a rebuild recomputes: the wide and tag rollups from the ledger, the narrow one
#: folded from the wide one
TABLES = (rollups.usage_rollup, rollups.usage_tag_rollup, rollups.usage_team_rollup)
#: differences listed in a report (all are counted)
LISTED = 100
#: differences found by a reconciliation: each key with its sums per side
Listed = list[tuple[tuple[Any, ...], dict[str, list[int]]]]


@dataclass
class RebuildReport:
    start: datetime
    end: datetime
    ledger_rows: int = 0
    rollup_rows: int = 0
    difference_count: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    fixed: bool = False

    @property
    def room(self) -> int:
        """How many more differences the report lists."""
        return LISTED - len(self.differences)

    def add(
        self,
        table: str,
        count: int,
        listed: Listed,
        dry_run: bool,
        where_of: Callable[[tuple[Any, ...]], dict[str, Any]],
    ) -> None:
        """One table's reconciliation: ``count`` keys differed (repaired unless ``dry_run``);
        each listed one described by its table, where it is (``where_of`` its key) and its
        sums on each side."""
        self.difference_count += count
        self.fixed = self.fixed or (count > 0 and not dry_run)
        for key, sides in listed:
            self.differences.append(
                {
                    "table": table,
                    **where_of(key),
                    "ledger": dict(zip(rollups.SUM_COLUMNS, sides.get("ledger", []), strict=False)),
                    "rollup": dict(zip(rollups.SUM_COLUMNS, sides.get("rollup", []), strict=False)),
                }
            )


async def purged_before(engine: AsyncEngine | AsyncConnection) -> datetime | None:
    query = sa.select(ledger_retention.c.purged_before).where(ledger_retention.c.id == 1)
    if isinstance(engine, AsyncConnection):
        return (await engine.execute(query)).scalar()
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar()


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            sa.text(
                "LOCK TABLE usage_rollup, usage_tag_rollup, usage_team_rollup, usage_team_daily "
                "IN EXCLUSIVE MODE"
            )
        )
        # the planner prices each call's tag expansion at 100 rows, so every chunk's
        # statements look costly enough to compile: JIT took most of a chunk's time
        await conn.execute(sa.text("SET LOCAL jit = off"))
    else:  # any write takes SQLite's one write lock for the rest of the transaction
        await conn.execute(sa.text("DELETE FROM usage_rollup WHERE bucket < 0"))


#: per dialect: a ledger row's bucket, its tag set as ``core.showback.tag_set`` writes it
#: (PostgreSQL: tags are ASCII of ``[A-Za-z0-9_.:/=+-]``, so their JSON text sorts as they
#: do; SQLite: that very function, registered on each connection by ``create_engine``),
#: and the join giving one row per distinct tag of the call (none: one row, tag NULL)
_DIALECT = {
    "postgresql": (
        "CAST(floor(extract(epoch FROM started_at)) AS BIGINT) / 900",
        "(SELECT '[' || coalesce(string_agg(q, ',' ORDER BY q COLLATE \"C\"), '') || ']'"
        " FROM (SELECT DISTINCT to_json(v)::text AS q"
        " FROM jsonb_array_elements_text(ledger.tags) AS e(v)) AS d)",
        "LEFT JOIN LATERAL (SELECT DISTINCT value FROM jsonb_array_elements_text(l.raw_tags)"
        " AS e(value)) AS t ON true",
    ),
    "sqlite": (
        # whole seconds (SQLite rounds to the millisecond: 10:14:59.9996 is 10:15:00)
        "CAST(strftime('%s', substr(started_at, 1, 19)) AS INTEGER) / 900",
        f"{SQLITE_TAG_SET}(ledger.tags)",
        "LEFT JOIN json_each(l.raw_tags) AS t ON NOT EXISTS (SELECT 1 FROM"
        " json_each(l.raw_tags) AS u WHERE u.key < t.key AND u.value = t.value)",
    ),
}
_N = rollups.NANOS


def _money_sum(whole: str, rest: str) -> tuple[str, str]:
    """SQL of a cost's two stored sums, whole dollars and the nanos below them, from the
    expressions of each row's (``{n}``: nanos in a dollar): the nanos summed apart and
    carried, so no sum leaves 64 bits."""
    nanos = f"CAST(sum({rest.format(n=_N)}) AS BIGINT)"
    return f"CAST(sum({whole.format(n=_N)}) AS BIGINT) + {nanos} / {_N}", f"{nanos} % {_N}"


def _from_ledger(dialect: str, table: sa.Table) -> str:
    """``SELECT`` of ``table``'s rows (its columns, in order) computed from the ledger rows
    of ``[:lo, :hi)`` by the database: the same sums as ``rollups.aggregate``, the cost
    summed as whole dollars and nanos apart and carried (no sum leaves 64 bits)."""
    bucket, tag_set, per_tag = _DIALECT[dialect]
    keys = [c.name for c in table.primary_key.columns]
    base = (
        f"SELECT {bucket} AS bucket, org_id, coalesce(team_id, '') AS team_id, "
        "coalesce(user_id, '') AS user_id, coalesce(agent_id, '') AS agent_id, key_id, "
        f"provider, model, kind, status, {tag_set if 'tags' in keys else 'NULL'} AS tags, "
        f"tags AS raw_tags, {', '.join(rollups.TOKEN_COLUMNS)}, "
        "coalesce(cost_nanos, 0) AS cost, "
        "CASE WHEN price_unknown OR cost_nanos IS NULL THEN 1 ELSE 0 END AS unpriced, "
        "CASE WHEN usage_estimated THEN 1 ELSE 0 END AS estimated, "
        "CASE WHEN usage_estimated THEN coalesce(cost_nanos, 0) ELSE 0 END AS estimated_cost "
        "FROM ledger WHERE started_at >= :lo AND started_at < :hi"
    )
    source = f"({base}) AS l"
    if "tag" in keys:  # one row per distinct tag of a call
        source = f"(SELECT l.*, coalesce(t.value, '') AS tag FROM ({base}) AS l {per_tag}) AS l"
    sums = (
        "count(*)",
        *(f"CAST(sum(l.{c}) AS BIGINT)" for c in rollups.TOKEN_COLUMNS),
        *_money_sum("l.cost / {n}", "l.cost % {n}"),
        "CAST(sum(l.unpriced) AS BIGINT)",
        "CAST(sum(l.estimated) AS BIGINT)",
        *_money_sum("l.estimated_cost / {n}", "l.estimated_cost % {n}"),
    )
    names = ", ".join(f"l.{k}" for k in keys)
    named = ", ".join(f"{s} AS {c}" for s, c in zip(sums, rollups.STORED_COLUMNS, strict=True))
    return f"SELECT {names}, {named} FROM {source} GROUP BY {names}"


def _in_range(dialect: str, table: sa.Table) -> str:
    """``table``'s rows of buckets ``[:b_lo, :b_hi)``; when its key leads with another
    column (the narrow rollup: ``org_id``), that column's values are listed first, one
    index probe each, so the range is searched per value instead of the table scanned
    (PostgreSQL: as an array, which its planner takes as an index condition)."""
    where = "bucket >= :b_lo AND bucket < :b_hi"
    first = table.primary_key.columns[0].name
    if first == "bucket":
        return where
    values = (
        f"WITH RECURSIVE v(x) AS (SELECT min({first}) FROM {table.name} UNION ALL "
        f"SELECT (SELECT min({first}) FROM {table.name} WHERE {first} > v.x) FROM v "
        "WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL"
    )
    listed = f"= ANY(ARRAY({values}))" if dialect == "postgresql" else f"IN ({values})"
    return f"{first} {listed} AND {where}"


def _params(lo: datetime, hi: datetime) -> list[sa.BindParameter[Any]]:
    return [
        sa.bindparam("lo", lo, type_=schema.UTCDateTime()),
        sa.bindparam("hi", hi, type_=schema.UTCDateTime()),
        sa.bindparam("b_lo", sb.bucket_of(lo)),
        sa.bindparam("b_hi", sb.bucket_of(hi)),
    ]


def _scratch(table: sa.Table) -> sa.TableClause:
    """The temporary table holding ``table``'s rows as the ledger gives them."""
    return sa.table(f"sg_fresh_{table.name}", *(sa.column(c.name) for c in table.columns))


async def _create(conn: AsyncConnection, name: str, like: sa.Table, side: bool = False) -> None:
    """A temporary table of ``like``'s columns and types (led by a text ``side`` column),
    dropped by the caller before its transaction ends (or with it, by a rollback)."""
    names = ", ".join(c.name for c in like.columns)
    lead = "CAST('' AS TEXT) AS side, " if side else ""
    await conn.execute(
        sa.text(
            f"CREATE TEMPORARY TABLE {name} AS SELECT {lead}{names} FROM {like.name} WHERE 1 = 0"
        )
    )


async def _reconcile(
    conn: AsyncConnection,
    table: sa.Table,
    fresh: str,
    where: str,
    params: list[sa.BindParameter[Any]],
    dry_run: bool,
    room: int,
) -> tuple[int, Listed]:
    """Compare ``table``'s rows that ``where`` selects with the temporary table ``fresh``
    (the same rows as the ledger gives them), set-based: the rows each side has and the
    other lacks (an ``EXCEPT`` each way) go to the temporary ``sg_diff``. Returns the count
    of keys that differ and the first ``room`` of them in key order (each with its sums
    per side, ``ledger`` and/or ``rollup``); unless ``dry_run``, deletes the stored rows
    of those keys and inserts the ledger's, in the caller's transaction — rows already
    right are not touched."""
    names = ", ".join(c.name for c in table.columns)
    key = [c for c in table.primary_key.columns]
    keys = ", ".join(c.name for c in key)
    await _create(conn, "sg_diff", table, side=True)
    fill = (
        f"WITH stored AS MATERIALIZED (SELECT {names} FROM {table.name} WHERE {where}) "
        f"INSERT INTO sg_diff SELECT 'ledger', d.* FROM "
        f"(SELECT {names} FROM {fresh} EXCEPT SELECT * FROM stored) AS d "
        f"UNION ALL SELECT 'rollup', r.* FROM "
        f"(SELECT * FROM stored EXCEPT SELECT {names} FROM {fresh}) AS r"
    )
    await conn.execute(sa.text(fill).bindparams(*params))
    distinct = f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM sg_diff) AS k"
    count = int((await conn.execute(sa.text(distinct))).scalar() or 0)
    listed: Listed = []
    if count and room > 0:
        # Python's order of the keys (code points): PostgreSQL's "C" collation
        collate = ' COLLATE "C"' if conn.dialect.name == "postgresql" else ""
        order = ", ".join(
            c.name + (collate if isinstance(c.type, (sa.String, sa.Text)) else "") for c in key
        )
        first = f"SELECT side, {names} FROM sg_diff ORDER BY {order}, side LIMIT {2 * room}"
        found: dict[tuple[Any, ...], dict[str, list[int]]] = {}
        for side, *values in await conn.execute(sa.text(first)):
            sums = rollups.logical([int(v) for v in values[len(key) :]])
            found.setdefault(tuple(values[: len(key)]), {})[side] = sums
        listed = [(k, found[k]) for k in sorted(found)[:room]]  # each of these has both rows
    if count and not dry_run:
        gone = f"SELECT {keys} FROM sg_diff WHERE side = 'rollup'"
        delete = f"DELETE FROM {table.name} WHERE {where} AND ({keys}) IN ({gone})"
        await conn.execute(sa.text(delete).bindparams(*params))
        insert = (
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM sg_diff WHERE side = 'ledger'"
        )
        await conn.execute(sa.text(insert))
    await conn.execute(sa.text("DROP TABLE sg_diff"))
    return count, listed


def _bucket_where(at: int, key: tuple[Any, ...]) -> dict[str, Any]:
    """Where a 15-minute rollup's key is: its bucket (at ``at`` in the key) and the rest."""
    return {
        "bucket_start": sb.bucket_start(key[at]).isoformat(),
        "key": [*key[:at], *key[at + 1 :]],
    }


async def _chunk(
    conn: AsyncConnection, lo: datetime, hi: datetime, dry_run: bool, report: RebuildReport
) -> None:
    """One chunk: the wide and tag rollups' rows computed from the ledger into temporary
    tables (one ``GROUP BY`` each), the narrow one's folded from the wide one's, as the
    writer does; each compared with the stored rows and, unless ``dry_run``, repaired."""
    ledger = schema.ledger
    where = (ledger.c.started_at >= lo, ledger.c.started_at < hi)
    count = sa.select(sa.func.count()).select_from(ledger).where(*where)
    report.ledger_rows += int((await conn.execute(count)).scalar() or 0)
    b_lo, b_hi = sb.bucket_of(lo), sb.bucket_of(hi)
    wide, _tags, narrow = TABLES
    in_range = (wide.c.bucket >= b_lo, wide.c.bucket < b_hi)
    count = sa.select(sa.func.count()).select_from(wide).where(*in_range)
    report.rollup_rows += int((await conn.execute(count)).scalar() or 0)
    dialect = conn.dialect.name
    fresh = {table: _scratch(table) for table in TABLES}
    for table in TABLES:
        await _create(conn, fresh[table].name, table)
    for table in TABLES[:2]:
        names = ", ".join(c.name for c in table.columns)
        insert = f"INSERT INTO {fresh[table].name} ({names}) {_from_ledger(dialect, table)}"
        await conn.execute(sa.text(insert).bindparams(*_params(lo, hi)[:2]))
    await conn.execute(rollups.fold_narrow(source=fresh[wide], into=fresh[narrow]))
    for table in TABLES:
        at = [c.name for c in table.primary_key.columns].index("bucket")
        n, listed = await _reconcile(
            conn,
            table,
            fresh[table].name,
            _in_range(dialect, table),
            _params(lo, hi)[2:],
            dry_run,
            report.room,
        )
        report.add(
            table.name,
            n,
            listed,
            dry_run,
            partial(_bucket_where, at),
        )
    for table in TABLES:
        await conn.execute(sa.text(f"DROP TABLE {fresh[table].name}"))


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
    await _daily(engine, start, end, gone, dry_run, report)
    return report


#: local days per transaction of the daily rollup's check
DAY_CHUNK = 31


async def _daily(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    gone: datetime | None,
    dry_run: bool,
    report: RebuildReport,
) -> None:
    """Check (and repair) ``usage_team_daily`` over every local day that meets
    ``[start, end)``, in each org's daily zone, against the ledger folded into those
    days (the whole day, also the part outside the range; a day reaching into purged
    time is left alone). Orgs with ledger rows in range and no daily zone yet get one."""
    z = rollups.usage_daily_zone
    ledger = schema.ledger
    async with engine.begin() as conn:
        await _lock(conn)
        seen = (
            sa.select(ledger.c.org_id)
            .distinct()
            .where(ledger.c.started_at >= start, ledger.c.started_at < end)
        )
        orgs = sorted(o for (o,) in await conn.execute(seen))
        zones = dict((await conn.execute(sa.select(z.c.org_id, z.c.timezone))).all())
        for org in orgs:
            if org not in zones:
                zones[org] = await daily.reporting_zone(conn, org)
                if not dry_run:
                    await daily.set_daily_zone(conn, org, zones[org])
    by_zone: dict[str, list[str]] = {}
    for org, zone in zones.items():
        by_zone.setdefault(zone, []).append(org)
    first_bucket, end_bucket = sb.bucket_of(start), sb.bucket_of(end)
    for zone, members in sorted(by_zone.items()):
        day = sb.local_day_of(first_bucket, zone)
        last = sb.local_day_of(end_bucket - 1, zone)
        if gone is not None:  # only days whose ledger rows are all still there
            while sb.bucket_start(sb.first_bucket_of_day(day, zone)) < gone:
                day += 1
        while day <= last:
            upto = min(day + DAY_CHUNK, last + 1)
            async with engine.begin() as conn:
                await _lock(conn)
                await _daily_chunk(conn, zone, sorted(members), day, upto, dry_run, report)
            day = upto


async def _daily_chunk(
    conn: AsyncConnection,
    zone: str,
    orgs: list[str],
    day: int,
    upto: int,
    dry_run: bool,
    report: RebuildReport,
) -> None:
    d = rollups.usage_team_daily
    b_lo, b_hi = sb.first_bucket_of_day(day, zone), sb.first_bucket_of_day(upto, zone)
    segments = sb.offset_segments(b_lo, b_hi, zone)
    of_bucket = rollups.local_day(sa.literal_column("n.bucket", sa.BigInteger()), segments)
    day_sql = str(of_bucket.compile(dialect=conn.dialect))
    sums = ", ".join(
        [
            *(f"CAST(sum(n.{c}) AS BIGINT)" for c in ("calls", *rollups.TOKEN_COLUMNS)),
            *_money_sum("n.cost_usd", "n.cost_nanos"),
            "CAST(sum(n.unpriced_calls) AS BIGINT)",
            "CAST(sum(n.estimated_calls) AS BIGINT)",
            *_money_sum("n.estimated_usd", "n.estimated_nanos"),
        ]
    )
    narrow = _from_ledger(conn.dialect.name, rollups.usage_team_rollup)
    others = ", ".join(f"n.{c}" for c in rollups.DAILY_KEY[2:])
    names = ", ".join(c.name for c in d.columns)
    fresh = _scratch(d).name
    await _create(conn, fresh, d)
    insert = (
        f"INSERT INTO {fresh} ({names}) "
        f"SELECT n.org_id, {day_sql} AS day, {others}, {sums} FROM ({narrow}) AS n "
        f"WHERE n.org_id IN :orgs GROUP BY n.org_id, {day_sql}, {others}"
    )
    orgs_param: sa.BindParameter[Any] = sa.bindparam("orgs", orgs, expanding=True)
    await conn.execute(
        sa.text(insert).bindparams(
            sa.bindparam("lo", sb.bucket_start(b_lo), type_=schema.UTCDateTime()),
            sa.bindparam("hi", sb.bucket_start(b_hi), type_=schema.UTCDateTime()),
            orgs_param,
        )
    )
    where = "org_id IN :orgs AND day >= :d_lo AND day < :d_hi"
    params = [orgs_param, sa.bindparam("d_lo", day), sa.bindparam("d_hi", upto)]
    count, listed = await _reconcile(conn, d, fresh, where, params, dry_run, report.room)
    await conn.execute(sa.text(f"DROP TABLE {fresh}"))
    report.add(
        d.name,
        count,
        listed,
        dry_run,
        lambda key: {
            "bucket_start": sb.local_day(int(key[1])).isoformat(),
            "timezone": zone,
            "key": [key[0], *key[2:]],
        },
    )


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
