"""Spend rollups, kept next to the ledger in the same transaction as each ledger batch.

Tables (created by migration 0013)::

    usage_rollup      per 15-minute bucket x org x team x user x agent x key x provider
                      x model x kind x status x tag set: calls, tokens by kind, web
                      searches (migration 0028), priced cost (integer nanos) and the count
                      of calls with no known price
    usage_tag_rollup  the same, once per tag of the call instead of the tag set (a call
                      with no tag under the tag ``""``): what ``group_by=tag`` reads
    usage_team_rollup (migration 0018) the narrow one: per org x 15-minute bucket x team x
                      provider x model x kind x status, no user, agent, key or tags; a
                      report that neither groups nor filters by those reads it (a handful
                      of rows per bucket instead of one per key and user). Its primary key
                      starts with ``org_id, bucket`` and, on PostgreSQL, INCLUDEs the sums
                      (an index-only scan); on SQLite the table is ``WITHOUT ROWID``, so
                      the primary key *is* the table, in that order
    usage_team_daily  (migration 0020) the narrow one per *local day* of the org's daily
                      zone (``usage_daily_zone``; ``spendgate.store.daily``) instead of
                      per bucket: what a report by day, week or month over whole local
                      days of that zone reads. Same key layout (``org_id, day`` first)

**One writer.** ``add_rollups`` is called by ``ledger.store_batch`` with the rows that
batch actually inserted, in the batch's transaction: a row is counted when it lands and
never again (a replayed spool or a retried batch inserts nothing new, so adds nothing).
The narrow rollup is folded from the wide one's rows (:func:`narrow`), and the daily one
from the narrow one's (:func:`daily`), so they hold the same calls by construction. The
same :func:`aggregate` feeds the backfills of migrations 0013, 0024 and 0026 (over
:func:`ledger_pages`), and the same folds the backfills of 0018 and 0020, so they can
never disagree with the writer on what a rollup row holds.

**Migrations name their own columns.** A migration that builds or fills a rollup table
lists that table's columns as literals of its revision and hands them (or ``sa.table``
clauses of them) to these functions, which sum whatever columns they are given: adding
a figure here (``TOKEN_COLUMNS``) takes a new migration, and leaves what the old ones
build unchanged.

**Estimates.** ``estimated_calls`` and ``estimated_nanos`` (migration 0026) count the
calls billed on an estimate (the ledger's ``usage_estimated``: a call timed out after
its request was written, billed at its admission worst case; a stream cut before the
provider's usage) and their cost, which is also in ``cost_nanos``: how much of a spend
is an estimate. Stored like the cost, as whole dollars (``estimated_usd``) and the nanos
below them.

Absent dimensions are stored as ``""`` (a primary key column cannot be NULL) and read
back as ``None``. Rows are upserted in key order, so two writers lock them in one order.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import SchemaItem

from spendgate.core.showback import BUCKET_SECONDS, BUCKETS_PER_DAY, Segment, local_day_of, tag_set
from spendgate.store.schema import metadata

KEY_COLUMNS = (
    "bucket",
    "org_id",
    "team_id",
    "user_id",
    "agent_id",
    "key_id",
    "provider",
    "model",
    "kind",
    "status",
)
#: the usage figures a rollup row sums, as the ledger names them: tokens by kind
#: (``cache_write_1h_tokens``: the part of ``cache_write_tokens`` written to Anthropic's
#: 1-hour cache, migration 0024) and ``web_searches``, the searches a server-side tool
#: ran, billed per search (migration 0028)
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "web_searches",
)
#: the calls billed on an estimate and their cost (part of ``cost_nanos``), migration 0026
ESTIMATE_COLUMNS = ("estimated_calls", "estimated_nanos")
SUM_COLUMNS = ("calls", *TOKEN_COLUMNS, "cost_nanos", "unpriced_calls", *ESTIMATE_COLUMNS)
#: what a rollup row stores: each cost as whole dollars and the nanos below them, carried
#: on every upsert, so a row's money never overflows 64 bits (``SUM_COLUMNS`` is the
#: exact logical view, with ``cost_nanos`` a Python int of any size)
STORED_COLUMNS = ("calls", *TOKEN_COLUMNS, "cost_usd", "cost_nanos", "unpriced_calls",
                  "estimated_calls", "estimated_usd", "estimated_nanos")  # fmt: skip
#: the stored money columns: whole dollars -> the nanos below them
MONEY_COLUMNS = {"cost_usd": "cost_nanos", "estimated_usd": "estimated_nanos"}
#: sums added to tables that already had rows, so declared with a default of 0 (a NOT
#: NULL column added to a SQLite table needs one): the column, the migration that added it
ADDED_COLUMNS = {
    "cache_write_1h_tokens": "0024_rollup_cache_1h",
    "web_searches": "0028_ledger_web_searches",
    **dict.fromkeys(STORED_COLUMNS[-3:], "0026_rollup_estimates"),  # the estimates
}
NANOS = 1_000_000_000


def stored(sums: Sequence[int], estimates: bool = True) -> list[int]:
    """Logical sums (``calls``, tokens…, ``cost_nanos``, ``unpriced_calls`` and, unless
    ``estimates`` is false (a migration before 0026), ``estimated_calls``,
    ``estimated_nanos``) -> stored columns (each cost split into whole dollars and nanos);
    any number of token figures."""
    if not estimates:
        whole, rest = divmod(sums[-2], NANOS)
        return [*sums[:-2], whole, rest, sums[-1]]
    whole, rest = divmod(sums[-4], NANOS)
    estimated_whole, estimated_rest = divmod(sums[-1], NANOS)
    return [*sums[:-4], whole, rest, sums[-3], sums[-2], estimated_whole, estimated_rest]


def logical(values: Sequence[int]) -> list[int]:
    """Stored columns (``STORED_COLUMNS``, any number of token figures) -> logical sums."""
    cost = values[-6] * NANOS + values[-5]
    return [*values[:-6], cost, values[-4], values[-3], values[-2] * NANOS + values[-1]]


def _sum_column(name: str) -> sa.Column[int]:
    default = "0" if name in ADDED_COLUMNS else None
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=default)


def _rollup_table(name: str, tag_column: str) -> sa.Table:
    keys: list[SchemaItem] = [
        sa.Column("bucket", sa.BigInteger(), primary_key=True, autoincrement=False),
        *(sa.Column(c, sa.String(200), primary_key=True) for c in KEY_COLUMNS[1:]),
        sa.Column(tag_column, sa.Text(), primary_key=True),
    ]
    sums: list[SchemaItem] = [_sum_column(c) for c in STORED_COLUMNS]
    return sa.Table(
        name,
        metadata,
        *keys,
        *sums,
        sa.Index(f"ix_{name}_org_bucket", "org_id", "bucket"),
        sa.Index(f"ix_{name}_team_bucket", "team_id", "bucket"),
    )


usage_rollup = _rollup_table("usage_rollup", "tags")
usage_tag_rollup = _rollup_table("usage_tag_rollup", "tag")

#: the key of the narrow rollup, in its primary key (and lock) order
NARROW_KEY = ("org_id", "bucket", "team_id", "provider", "model", "kind", "status")
#: the report dimensions the narrow rollup can answer (group by or filter on)
NARROW_DIMENSIONS = frozenset({"org", "team", "provider", "model", "kind", "status"})


def _narrow_table(name: str, key: tuple[str, ...]) -> sa.Table:
    """A narrow rollup: ``key`` is org, the time unit (an integer), then text dimensions;
    the primary key in ``key``'s order covers the sums (PostgreSQL: INCLUDE, for an
    index-only scan; SQLite: ``WITHOUT ROWID``, the primary key is the table)."""
    return sa.Table(
        name,
        metadata,
        sa.Column(key[0], sa.String(200), nullable=False),
        sa.Column(key[1], sa.BigInteger(), nullable=False, autoincrement=False),
        *(sa.Column(c, sa.String(200), nullable=False) for c in key[2:]),
        *(_sum_column(c) for c in STORED_COLUMNS),
        sa.PrimaryKeyConstraint(*key, name=f"pk_{name}", postgresql_include=list(STORED_COLUMNS)),
        sqlite_with_rowid=False,
    )


usage_team_rollup = _narrow_table("usage_team_rollup", NARROW_KEY)
#: wide key position of each narrow key column
_NARROW_FROM_WIDE = tuple(KEY_COLUMNS.index(c) for c in NARROW_KEY)

#: the key of the daily narrow rollup: the narrow key with the bucket replaced by the local
#: day number (days since 1970-01-01) in the org's daily zone, and the model before the
#: provider — a report by day x team x model then reads its groups in key order
#: (PostgreSQL: a streaming GroupAggregate and an incremental sort by day instead of a
#: hash aggregate and a full sort, half the backend CPU; SQLite: no temporary B-tree)
DAILY_KEY = ("org_id", "day", "team_id", "model", "provider", "kind", "status")
#: narrow key position of each daily key column after the day
_DAILY_FROM_NARROW = tuple(NARROW_KEY.index(c) for c in DAILY_KEY[2:])
usage_team_daily = _narrow_table("usage_team_daily", DAILY_KEY)
#: the zone each org's ``usage_team_daily`` rows are drawn in (one row per org that has
#: any rollup row); its row is what a ledger batch locks (shared) and a zone change
#: locks (exclusive)
usage_daily_zone = sa.Table(
    "usage_daily_zone",
    metadata,
    sa.Column("org_id", sa.String(200), primary_key=True),
    sa.Column("timezone", sa.String(64), nullable=False),
)


Key = tuple[Any, ...]
Sums = list[int]
Rollup = dict[Key, Sums]


def _add(into: Rollup, key: Key, figures: tuple[int, ...]) -> None:
    """One call into ``into[key]``: its count and its other ``figures``."""
    sums = into.get(key)
    if sums is None:
        into[key] = [1, *figures]
        return
    sums[0] += 1
    for i, value in enumerate(figures, 1):
        sums[i] += value


def aggregate(
    rows: Iterable[tuple[int, Any]],
    main: Rollup | None = None,
    tags: Rollup | None = None,
    tokens: Sequence[str] = TOKEN_COLUMNS,
    estimates: bool = True,
) -> tuple[Rollup, Rollup]:
    """Sum ``(started_at_epoch_seconds, row)`` pairs into both rollups' rows; a row is a
    ``LedgerEntry`` or anything with its fields (a selected ledger row). ``tokens``: the
    token figures summed, ``estimates``: whether the estimated calls and cost are (a
    migration passes those of its own revision)."""
    main = {} if main is None else main
    tags = {} if tags is None else tags
    tokens_of = _figures(tokens)
    for seconds, row in rows:
        cost = row.cost_nanos or 0
        unpriced = 1 if row.price_unknown or row.cost_nanos is None else 0
        figures = (*tokens_of(row), cost, unpriced)
        if estimates:
            figures += (1, cost) if row.usage_estimated else (0, 0)
        base = (
            seconds // BUCKET_SECONDS,
            row.org_id,
            row.team_id or "",
            row.user_id or "",
            row.agent_id or "",
            row.key_id,
            row.provider,
            row.model,
            row.kind,
            row.status,
        )
        _add(main, (*base, tag_set(row.tags)), figures)
        for tag in set(row.tags) or {""}:
            _add(tags, (*base, tag), figures)
    return main, tags


def _figures(names: Sequence[str]) -> Callable[[Any], tuple[int, ...]]:
    """A row's token figures ``names``, as a tuple."""
    if not names:
        return lambda row: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda row: (one(row),)
    return operator.attrgetter(*names)


def _seconds(value: Any) -> int:
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


class _LedgerRow:
    """A selected ledger row with ``tags`` parsed (JSON text on SQLite)."""

    __slots__ = ("_row", "tags")

    def __init__(self, row: Any) -> None:
        self._row = row
        self.tags = json.loads(row.tags) if isinstance(row.tags, str) else list(row.tags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


#: ledger rows read at a time by :func:`ledger_pages`
PAGE_ROWS = 10_000


def ledger_pages(
    conn: sa.Connection, tokens: Sequence[str], where: str | None = None
) -> Iterator[list[tuple[int, Any]]]:
    """The ledger's rows (``where``: a SQL condition on them) a page at a time, as the
    ``(started_at_epoch_seconds, row)`` pairs :func:`aggregate` sums, each row with the
    key columns, the token figures ``tokens``, the cost and whether it is an estimate: a
    migration's backfill.

    In pages by request id, not a server-side cursor: asyncpg keeps a cursor's portal
    open to the end of the transaction, and a later ALTER TABLE of the ledger then fails."""
    condition = f"({where}) AND " if where else ""
    query = sa.text(
        "SELECT request_id, org_id, team_id, user_id, agent_id, key_id, tags, provider, "
        f"model, kind, status, {''.join(f'{t}, ' for t in tokens)}cost_nanos, price_unknown, "
        "usage_estimated, started_at "
        f"FROM ledger WHERE {condition}request_id > :after ORDER BY request_id "
        f"LIMIT {PAGE_ROWS}"
    )
    after = ""
    while page := conn.execute(query, {"after": after}).all():
        yield [(_seconds(row.started_at), _LedgerRow(row)) for row in page]
        after = page[-1].request_id


def narrow(main: Rollup, into: Rollup | None = None) -> Rollup:
    """The narrow rollup's rows, folded from the wide rollup's (``aggregate``'s ``main``)."""
    into = {} if into is None else into
    for key, sums in main.items():
        short = tuple(key[i] for i in _NARROW_FROM_WIDE)
        have = into.get(short)
        if have is None:
            into[short] = list(sums)
        else:
            for i, value in enumerate(sums):
                have[i] += value
    return into


def daily(teams: Rollup, zones: Mapping[str, str], into: Rollup | None = None) -> Rollup:
    """The daily rollup's rows, folded from the narrow rollup's (:func:`narrow`): each
    bucket's row under its local day in its org's daily zone (``zones``)."""
    into = {} if into is None else into
    for key, sums in teams.items():
        org = key[0]
        short = (org, local_day_of(key[1], zones[org]), *(key[i] for i in _DAILY_FROM_NARROW))
        have = into.get(short)
        if have is None:
            into[short] = list(sums)
        else:
            for i, value in enumerate(sums):
                have[i] += value
    return into


def as_rows(table: sa.Table, rollup: Rollup) -> list[dict[str, Any]]:
    """Rollup rows in key order (the lock order), as column dicts for ``table``."""
    names = [c.name for c in table.columns]
    return [dict(zip(names, (*key, *stored(rollup[key])), strict=True)) for key in sorted(rollup)]


def upsert_statement(table: sa.Table, dialect: str) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE SET sum = sum + excluded.sum``."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    keys = [c.name for c in table.primary_key.columns]
    added: dict[str, Any] = {c: table.c[c] + insert.excluded[c] for c in STORED_COLUMNS}
    for whole, rest in MONEY_COLUMNS.items():
        added[whole] = added[whole] + added[rest] // NANOS
        added[rest] = added[rest] % NANOS
    return insert.on_conflict_do_update(index_elements=keys, set_=added)


def write_statements(
    dialect: str, main: Rollup, tags: Rollup, teams: Rollup | None = None
) -> list[tuple[Any, list[Any]]]:
    """What to execute (statement, rows) to add ``main`` and ``tags`` (and ``teams``, the
    narrow rollup's rows, when given: migration 0013 predates its table) to the rollups."""
    out = []
    pairs = [(usage_rollup, main), (usage_tag_rollup, tags)]
    if teams is not None:
        pairs.append((usage_team_rollup, teams))
    for table, rollup in pairs:
        if rollup:
            out.append((upsert_statement(table, dialect), as_rows(table, rollup)))
    return out


def _driver_upsert(table: sa.Table, dialect: str) -> str:
    names = [c.name for c in table.columns]
    keys = [c.name for c in table.primary_key.columns]
    marks = (
        ", ".join(f"${i}" for i in range(1, len(names) + 1))
        if dialect == "postgresql"
        else ", ".join("?" for _ in names)
    )
    t = table.name
    added = {c: f"{t}.{c} + excluded.{c}" for c in STORED_COLUMNS}
    for whole, rest in MONEY_COLUMNS.items():
        added[whole] += f" + ({added[rest]}) / {NANOS}"  # integer division
        added[rest] = f"({added[rest]}) % {NANOS}"
    sums = ", ".join(f"{c} = {expr}" for c, expr in added.items())
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sums}"
    )


_DRIVER_SQL = {
    (t.name, d): _driver_upsert(t, d)
    for t in (usage_rollup, usage_tag_rollup, usage_team_rollup, usage_team_daily)
    for d in ("sqlite", "postgresql")
}


def driver_writes(
    dialect: str, main: Rollup, tags: Rollup, zones: Mapping[str, str] | None = None
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The same writes (all three rollups, the narrow one folded from ``main``, and, given
    each org's daily zone, the daily one folded from the narrow one) as plain driver SQL
    and tuples, in key order: the ledger writer's path (SQLAlchemy's per-row parameter
    processing tripled its cost per row)."""
    out = []
    teams = narrow(main)
    pairs = [(usage_rollup, main), (usage_tag_rollup, tags), (usage_team_rollup, teams)]
    if zones is not None:
        pairs.append((usage_team_daily, daily(teams, zones)))
    for table, rollup in pairs:
        if rollup:
            rows = [(*key, *stored(rollup[key])) for key in sorted(rollup)]
            out.append((_DRIVER_SQL[(table.name, dialect)], rows))
    return out


def fold_narrow(
    where: sa.ColumnElement[bool] | None = None,
    source: sa.TableClause = usage_rollup,
    into: sa.TableClause = usage_team_rollup,
) -> sa.Insert:
    """``INSERT INTO usage_team_rollup SELECT … FROM usage_rollup GROUP BY …``: the narrow
    rollup's rows (of the wide rows ``where`` selects) computed by the database, set-based
    — migration 0018's backfill, and the rebuild (from and into its scratch tables of the
    same columns, ``source`` and ``into``). Every column of ``into`` outside the key is
    summed (a migration passes tables of its own revision's columns). The nanos are
    summed apart from the dollars and carried, so no sum leaves 64 bits."""
    w = source
    sums: dict[str, sa.ColumnElement[Any]] = {
        c: sa.func.sum(w.c[c]) for c in _sum_names(into, NARROW_KEY)
    }
    _carry(sums, source)
    keys = [w.c[c] for c in NARROW_KEY]
    query = sa.select(*keys, *sums.values())
    if where is not None:
        query = query.where(where)
    return into.insert().from_select([*NARROW_KEY, *sums], query.group_by(*keys))


def _carry(sums: dict[str, sa.ColumnElement[Any]], source: sa.TableClause) -> None:
    """Each money column among ``sums`` (``SUM``s of ``source``'s columns) summed as
    whole dollars and nanos apart, the nanos' whole dollars carried: no sum leaves 64
    bits."""
    for whole, rest in MONEY_COLUMNS.items():
        if whole in sums:
            nanos = sa.cast(sa.func.sum(source.c[rest]), sa.BigInteger())
            total = sa.cast(sa.func.sum(source.c[whole]), sa.BigInteger())
            sums[whole] = total + nanos // NANOS
            sums[rest] = nanos % NANOS


def _sum_names(into: sa.TableClause, key: Sequence[str]) -> list[str]:
    """The columns of a rollup table (or a clause naming its columns) outside ``key``."""
    return [c.name for c in into.c if c.name not in key]


def local_bucket(bucket: sa.ColumnElement[Any], segments: Sequence[Segment]) -> Any:
    """``bucket`` plus its zone's offset (``CASE`` over the offset changes), the offsets
    and bounds rendered as literals: the same text wherever it appears (GROUP BY)."""
    if len(segments) == 1:
        return bucket + sa.literal_column(str(int(segments[0].offset)))
    whens: list[tuple[Any, Any]] = [
        (bucket < sa.literal_column(str(int(s.end))), sa.literal_column(str(int(s.offset))))
        for s in segments[:-1]
    ]
    return bucket + sa.case(*whens, else_=sa.literal_column(str(int(segments[-1].offset))))


def local_day(bucket: sa.ColumnElement[Any], segments: Sequence[Segment]) -> Any:
    """The local day number of ``bucket`` (:func:`local_bucket` divided by the buckets of
    a day; an integer division on both databases, the operands being integers)."""
    local = sa.type_coerce(local_bucket(bucket, segments), sa.BigInteger())
    return local // sa.literal_column(str(BUCKETS_PER_DAY), sa.BigInteger())


def fold_daily(
    segments: Sequence[Segment],
    where: sa.ColumnElement[bool],
    source: sa.TableClause = usage_team_rollup,
    into: sa.TableClause = usage_team_daily,
) -> sa.Insert:
    """``INSERT INTO usage_team_daily SELECT … FROM usage_team_rollup GROUP BY …``: the
    daily rows of the narrow rows ``where`` selects, each bucket under its local day by
    ``segments`` (which must cover those buckets) — set-based, the nanos carried. Every
    column of ``into`` outside the key is summed, as in :func:`fold_narrow`."""
    n, d = source, into
    sums: dict[str, sa.ColumnElement[Any]] = {
        c: sa.cast(sa.func.sum(n.c[c]), sa.BigInteger()) for c in _sum_names(into, DAILY_KEY)
    }
    _carry(sums, source)
    day = local_day(n.c.bucket, segments)
    keys = [n.c.org_id, day, *(n.c[c] for c in DAILY_KEY[2:])]
    query = sa.select(*keys, *sums.values()).where(where).group_by(*keys)
    return d.insert().from_select([*DAILY_KEY, *sums], query)
