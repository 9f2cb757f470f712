"""Forecasts, the I/O side: budgets' daily spend from the ledger, the latest forecast per
budget, and the ``budget.forecast_overrun`` events. The arithmetic is in
``spendgate.core.forecasting``.

    refresh_all(engine, budgets, now)
      1. reads of the lookback window (``reads``, ``spend_by_day``), summed in SQL by
         local day and by what the budgets read compare: the budgets naming a user,
         agent, key or tag, one read of the wide rollup's whole 15-minute buckets by
         every attribute a budget can filter on, each budget zone a day column; the
         others (org and team budgets, their providers, models and kinds), a read per
         zone of the daily rollup's whole local days where an org's daily rows are in
         that zone, else of the narrow rollup's buckets, by org × team × provider ×
         model × kind; the ledger's part buckets at either end
      2. per budget, in Python: the subjects it counts (``budget_rules.applies``), their
         days summed
      3. the forecasts, computed off the event loop (a thread, or the executor given)
      4. stored, one row per budget, and an overrun event when a band is newly passed
         (``core.forecast_overrun``: once a period by default; with ``escalation``, again
         at each higher band)

Forecasts are refreshed on a schedule (``refresh_loop``) and on demand, never on the
proxy's request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.core import forecast_overrun as fo
from spendgate.core import forecasting as fc
from spendgate.core import showback as sb
from spendgate.core.budget_windows import Window, days_in_window, window_at
from spendgate.core.clock import Clock
from spendgate.core.event_data import budget_event_data
from spendgate.core.money import format_usd
from spendgate.stopping import Stop
from spendgate.store import schema
from spendgate.store.cost_sums import cost_from_sums, split_cost_sum
from spendgate.store.database import upsert
from spendgate.store.events import record_event
from spendgate.store.leases import take_lease, while_held
from spendgate.store.policies import PolicySnapshot
from spendgate.store.rollups import (
    NARROW_DIMENSIONS,
    local_day,
    usage_daily_zone,
    usage_rollup,
    usage_team_daily,
    usage_team_rollup,
)
from spendgate.store.schema import JSONType, UTCDateTime
from spendgate.store.showback import WORK_MEM

log = logging.getLogger("spendgate")

#: complete local days of history read for each budget (the ETS window)
HISTORY_DAYS = fc.FIT_DAYS
#: forecasts per job handed to a worker
CHUNK = 250
#: rows per IN (...) list
ID_BATCH = 500
Ints = NDArray[np.int64]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

budget_forecasts = sa.Table(
    "budget_forecasts",
    schema.metadata,
    sa.Column(
        "budget_id",
        sa.String(40),
        sa.ForeignKey("budgets.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    #: the window forecast, by its UTC bounds (``Window.span``); a row stored before, by its
    #: local date (``Window.key``): see :func:`of_window`
    sa.Column("period_key", sa.String(40), nullable=False),
    sa.Column("generated_at", UTCDateTime(), nullable=False),
    sa.Column("method", sa.String(20), nullable=False),
    sa.Column("history_days", sa.Integer(), nullable=False),
    sa.Column("spent_nanos", sa.BigInteger(), nullable=False),
    sa.Column("p10_nanos", sa.BigInteger(), nullable=False),
    sa.Column("p50_nanos", sa.BigInteger(), nullable=False),
    sa.Column("p90_nanos", sa.BigInteger(), nullable=False),
    sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
    #: P50 as a percentage of the amount, a decimal string
    sa.Column("percent_of_budget", sa.String(20), nullable=False),
    #: {threshold name: "YYYY-MM-DD" or null}
    sa.Column("crossings", JSONType, nullable=False),
    #: the overrun limit (hard cap, or the amount) the bands are measured against
    sa.Column("limit_nanos", sa.BigInteger(), nullable=False),
    #: the highest overrun band announced in this period, if any
    sa.Column("overrun_band", sa.Integer(), nullable=True),
    #: the hard cap recorded spend stops at (None: observation only); P10–P90 are bounded
    #: by it, and ``uncapped_p50_nanos`` is what the period would cost without it
    sa.Column("hard_cap_nanos", sa.BigInteger(), nullable=True),
    sa.Column("uncapped_p50_nanos", sa.BigInteger(), nullable=True),
)


@dataclass(frozen=True, slots=True)
class LedgerDays:
    """Settled spend of a window per subject and local day: per subject, (its local days,
    a row per zone of day numbers since 1970-01-01, a column per day it spent on; the
    nanos of each column). ``row``: each zone's row (zones whose offsets are the same
    over the window share one)."""

    row: dict[str, int]
    #: the report dimensions the subjects carry: every one, or ``rollups.NARROW_DIMENSIONS``
    #: (org × team × provider × model × kind; the others blank), which only the budgets
    #: whose ``budget_rules.dimensions`` they include can be matched against
    dimensions: frozenset[str] = frozenset(sb.DIMENSIONS)
    by_org: dict[str, list[tuple[rules.Subject, Ints, Ints]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refreshed:
    forecasts: dict[str, fc.Forecast]
    announced: dict[str, int]


# -- 1. spend per local day, summed by the database ------------------------------------------
def _bucket(dialect: str, column: Any, seconds: int) -> Any:
    size: sa.ColumnElement[int] = sa.literal_column(str(int(seconds)), sa.Integer)
    if dialect == "sqlite":
        # the whole seconds only: SQLite rounds a time to the millisecond, so
        # ``10:14:59.9996`` would be second 10:15:00 (and its bucket the next one), where
        # the rollups' writer and PostgreSQL take the second it started in
        whole = sa.func.substr(column, 1, 19)
        return sa.cast(sa.func.strftime("%s", whole), sa.Integer) / size
    return sa.cast(sa.func.floor(sa.extract("epoch", column) / size), sa.BigInteger)


#: what a budget can filter on, as the ledger and the wide rollup name them
DIMS = ("org_id", "team_id", "user_id", "agent_id", "key_id", "tags", "provider", "model", "kind")
#: those the narrow rollups have too (no user, agent, key or tags): the subjects of a read
#: for budgets that name none of those (``budget_rules.dimensions`` within
#: ``rollups.NARROW_DIMENSIONS``)
TEAM_DIMS = ("org_id", "team_id", "provider", "model", "kind")
#: a 15-minute bucket number's local day in each zone of a read (``rollups.local_day``)
DaysOf = Callable[[Any], list[Any]]
#: subject (its fields) -> its local days (one per zone shape) -> nanos
Grouped = dict[tuple[Any, ...], dict[tuple[int, ...], int]]


async def spend_by_day(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    zones: Iterable[str],
    org_ids: Sequence[str] | None = None,
    narrow: tuple[str, str] | None = None,
    *,
    rollup: bool = True,
    dimensions: Collection[str] = sb.DIMENSIONS,
) -> LedgerDays:
    """The settled spend of the calls started in ``[start, end)``, per subject and local
    day of each zone, to the nano, summed by the database: a row per subject and day.

    ``dimensions``: those the budgets the days are for compare (``budget_rules.dimensions``
    of each); the subjects carry what they name and the narrowest table that has it all
    is read. By default (or naming a user, agent, key or tag), every attribute a budget
    can filter on (the tags as a set, sorted, once each): the whole 15-minute buckets
    inside the window from the wide rollup (written in the ledger batch's own
    transaction). Naming none of those (``rollups.NARROW_DIMENSIONS``: an org or team
    budget, its providers, models and kinds), org × team × provider × model × kind only
    (the others blank): the whole buckets from the narrow rollup, or, when the read's
    zones share their offsets over the window (one zone, say), the whole local days
    from the daily rollup for the orgs whose daily rows are in one of them. Either way
    only the part buckets at either end from the ledger; every offset of a zone starts
    its days on a bucket bound (``core.showback``), so the days are those of the calls.

    ``rollup=False``: all from the ledger (what the tests compare). ``org_ids``: None,
    every org. ``narrow``: ``(field, value)`` of ``budget_rules.scope_field``, read only
    those calls; the caller still matches each subject (``budget_rules.applies``)."""
    teams = set(dimensions) <= NARROW_DIMENSIONS
    dims = TEAM_DIMS if teams else DIMS
    span = (sb.bucket_of(start), sb.bucket_of(end) + 1)
    shapes: dict[tuple[sb.Segment, ...], int] = {}
    row = {
        tz: shapes.setdefault(tuple(sb.offset_segments(*span, tz)), len(shapes))
        for tz in sorted(set(zones))
    }

    def days_of(bucket: Any) -> list[Any]:
        return [local_day(bucket, list(segments)) for segments in shapes]

    step = timedelta(seconds=sb.BUCKET_SECONDS)
    first = -((EPOCH - start) // step)  # the first bucket starting at or after start
    last = (end - EPOCH) // step  # the bucket holding end (its rows are past end)
    whole = rollup and first < last  # whole buckets to read from the rollups
    ledger = [(start, end)]
    if whole:
        ledger = [
            (a, b) for a, b in ((start, first * step + EPOCH), (last * step + EPOCH, end)) if a < b
        ]
    grouped: Grouped = defaultdict(lambda: defaultdict(int))
    width = len(dims)
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # a subject's days are a few of the rows read: hash them in memory rather
            # than sort the rows on disk (this read's transaction only)
            await conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        for a, b in ledger:
            query = _ledger_query(engine.dialect.name, a, b, days_of, dims, org_ids, narrow)
            for found in await conn.execute(query):
                if teams:
                    key = _team_key(found[:width])
                else:
                    key = _subject_key(found[:width], found[5] or ())
                grouped[key][tuple(found[width:-1])] += int(found[-1])
        if whole and teams:
            days = _whole_days(first, last, next(iter(row))) if len(shapes) == 1 else None
            await _read_teams(conn, first, last, days, list(row), days_of, org_ids, narrow, grouped)
        elif whole:
            query = _rollup_query(usage_rollup, dims, first, last, days_of, org_ids, narrow)
            keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # a subject's rows share one
            for found in await conn.execute(query):
                values = tuple(found[:width])
                known = keys.get(values)
                if known is None:
                    tags = json.loads(values[5])
                    known = keys[values] = _subject_key([v or None for v in values], tags)
                grouped[known][tuple(found[width:-2])] += cost_from_sums(found[-2], found[-1])
    return _as_days(
        row, len(shapes), grouped, NARROW_DIMENSIONS if teams else frozenset(sb.DIMENSIONS)
    )


def _whole_days(first: int, last: int, tz: str) -> tuple[int, int, int, int] | None:
    """The local days ``[d0, d1)`` of ``tz`` whose buckets all lie in ``[first, last)``,
    and their buckets ``[b0, b1)``; None when there is no such day."""
    d0 = sb.local_day_of(first, tz)
    if sb.first_bucket_of_day(d0, tz) < first:  # ``first`` cuts its day
        d0 += 1
    d1 = sb.local_day_of(last, tz)  # the day ``last`` is in is cut by it (or starts at it)
    if d1 <= d0:
        return None
    return d0, d1, sb.first_bucket_of_day(d0, tz), sb.first_bucket_of_day(d1, tz)


async def _read_teams(
    conn: AsyncConnection,
    first: int,
    last: int,
    days: tuple[int, int, int, int] | None,
    zones: Sequence[str],
    days_of: DaysOf,
    org_ids: Sequence[str] | None,
    narrow: tuple[str, str] | None,
    grouped: Grouped,
) -> None:
    """The whole buckets ``[first, last)`` by ``TEAM_DIMS`` into ``grouped``. With ``days``
    (the whole local days ``[d0, d1)``, buckets ``[b0, b1)``, of the read's one set of
    offsets): those days from the daily rollup for the orgs whose daily rows are in a
    zone of the read (asked in the same statement as the rows, so of the same snapshot: a
    zone change refolds them in its own transaction), then the narrow rollup's buckets
    before and after them, and in between for every other org (one in another zone, or
    with no daily row those days — and then no narrow row either). Without ``days``, the
    narrow rollup's buckets."""
    n, width = usage_team_rollup, len(TEAM_DIMS)

    async def add(query: sa.Select[Any]) -> set[str]:
        orgs: set[str] = set()
        for found in await conn.execute(query):
            orgs.add(found[0])
            days_at = grouped[_team_key(found[:width])]
            days_at[tuple(found[width:-2])] += cost_from_sums(found[-2], found[-1])
        return orgs

    if days is None:
        await add(_rollup_query(n, TEAM_DIMS, first, last, days_of, org_ids, narrow))
        return
    d0, d1, b0, b1 = days
    served = await add(_daily_query(d0, d1, zones, org_ids, narrow))
    for a, b in ((first, b0), (b1, last)):
        if a < b:
            await add(_rollup_query(n, TEAM_DIMS, a, b, days_of, org_ids, narrow))
    others, where = org_ids, []
    if org_ids is not None:
        others = [o for o in org_ids if o not in served]
    elif served:
        where = [n.c.org_id.not_in(sorted(served))]
    if others is None or others:
        await add(_rollup_query(n, TEAM_DIMS, b0, b1, days_of, others, narrow, where))


def _as_days(
    row: dict[str, int], rows: int, grouped: Grouped, dimensions: frozenset[str]
) -> LedgerDays:
    out = LedgerDays(row, dimensions)
    for key, days in grouped.items():
        subject = rules.Subject(*key)
        out.by_org.setdefault(subject.org_id, []).append(
            (
                subject,
                np.asarray(list(days), dtype=np.int64).reshape(len(days), rows).T,
                np.asarray(list(days.values()), dtype=np.int64),
            )
        )
    return out


def _subject_key(dims: Sequence[Any], tags: Iterable[str]) -> tuple[Any, ...]:
    """``DIMS`` as a subject's fields, the tags as a sorted set (the rollup's tag set)."""
    return (dims[0], *dims[1:5], tuple(sorted(set(tags))), *dims[6:])


def _team_key(dims: Sequence[Any]) -> tuple[Any, ...]:
    """``TEAM_DIMS`` as a subject's fields (a rollup's absent team ``""`` as None), the
    user, agent, key and tags blank: the budgets such a read is for never compare them."""
    return (dims[0], dims[1] or None, None, None, "", (), *dims[2:])


def _ledger_query(
    dialect: str,
    start: datetime,
    end: datetime,
    days_of: DaysOf,
    dims: Sequence[str],
    org_ids: Sequence[str] | None,
    narrow: tuple[str, str] | None,
) -> sa.Select[Any]:
    """The ledger rows started in ``[start, end)``, summed by ``dims`` and local days."""
    t = schema.ledger
    return _summed(
        t,
        dims,
        days_of(_bucket(dialect, t.c.started_at, sb.BUCKET_SECONDS)),
        [sa.func.sum(t.c.cost_nanos)],
        [t.c.started_at >= start, t.c.started_at < end, t.c.cost_nanos.is_not(None)],
        org_ids,
        narrow,
    )


def _rollup_query(
    t: sa.Table,
    dims: Sequence[str],
    first: int,
    last: int,
    days_of: DaysOf,
    org_ids: Sequence[str] | None,
    narrow: tuple[str, str] | None,
    where: Sequence[sa.ColumnElement[bool]] = (),
) -> sa.Select[Any]:
    """The buckets ``[first, last)`` of a 15-minute rollup (the wide or the narrow one),
    summed by ``dims`` and local days, the cost as whole dollars and nanos (exact)."""
    return _summed(
        t,
        dims,
        days_of(t.c.bucket),
        split_cost_sum(t.c.cost_usd, t.c.cost_nanos),
        [t.c.bucket >= first, t.c.bucket < last, *where],
        org_ids,
        narrow,
    )


def _daily_query(
    d0: int,
    d1: int,
    zones: Sequence[str],
    org_ids: Sequence[str] | None,
    narrow: tuple[str, str] | None,
) -> sa.Select[Any]:
    """The daily rollup's local days ``[d0, d1)`` of the orgs whose daily rows are in one
    of ``zones`` (zones of the same offsets over those days), summed by ``TEAM_DIMS`` and
    day, the cost exact."""
    d, z = usage_team_daily, usage_daily_zone
    in_zone = sa.select(z.c.org_id).where(z.c.timezone.in_(sorted(zones)))
    return _summed(
        d,
        TEAM_DIMS,
        [d.c.day],
        split_cost_sum(d.c.cost_usd, d.c.cost_nanos),
        [d.c.day >= d0, d.c.day < d1, d.c.org_id.in_(in_zone)],
        org_ids,
        narrow,
    )


def _summed(
    t: sa.Table,
    dims: Sequence[str],
    days: Sequence[Any],
    sums: Sequence[Any],
    where: Sequence[sa.ColumnElement[bool]],
    org_ids: Sequence[str] | None,
    narrow: tuple[str, str] | None,
) -> sa.Select[Any]:
    """``t``'s rows ``where`` selects, of ``org_ids`` (None: every org), narrowed, summed
    (``sums``) by ``dims`` and ``days``."""
    columns = [t.c[d] for d in dims]
    query = sa.select(*columns, *days, *sums).where(*where).group_by(*columns, *days)
    if org_ids is not None:
        query = query.where(t.c.org_id.in_(sorted(set(org_ids))))
    if narrow is not None:
        query = query.where(t.c[narrow[0]] == narrow[1])
    return query


# -- 2. each budget's local days ------------------------------------------------------------
class DailySpend:
    """Budgets' spend per local day, from one ``LedgerDays`` (caches per zone and subject)."""

    def __init__(self, ledger: LedgerDays, now: datetime) -> None:
        self._ledger = ledger
        self._now = now
        self._index: dict[str, dict[tuple[str, str | None], list[int]]] = {}
        self._subject_days: dict[tuple[str, str, int], Ints] = {}
        self._today: dict[str, tuple[date, float]] = {}

    def history(self, budget: rules.Budget) -> fc.SpendHistory:
        """The last ``HISTORY_DAYS`` complete local days and today so far, for ``budget``."""
        today, elapsed = self.today(budget.timezone)
        daily = np.zeros(HISTORY_DAYS + 1, dtype=np.int64)
        for i in self.matching(budget):
            daily += self._days(budget.org_id, i, budget.timezone)
        return fc.SpendHistory(
            today - timedelta(days=HISTORY_DAYS),
            tuple(int(v) for v in daily[:-1]),
            int(daily[-1]),
            elapsed,
        )

    def today(self, tz: str) -> tuple[date, float]:
        """The local date in ``tz`` and how much of it has passed."""
        found = self._today.get(tz)
        if found is None:
            found = self._today[tz] = fc.local_today(self._now, tz)
        return found

    def matching(self, budget: rules.Budget) -> list[int]:
        """The org's subjects the budget counts, by ``budget_rules.applies``."""
        if not rules.dimensions(budget) <= self._ledger.dimensions:
            raise ValueError(f"budget {budget.id}: these days have no user, agent, key or tag")
        subjects = self._ledger.by_org.get(budget.org_id, [])
        index = self._index.get(budget.org_id)
        if index is None:
            index = self._index[budget.org_id] = _scope_index(s for s, _, _ in subjects)
        scope = budget.tag if budget.scope_type == "tag" else budget.scope_id
        candidates = index.get(
            (budget.scope_type, None if budget.scope_type == "org" else scope), []
        )
        return [i for i in candidates if rules.applies(budget, subjects[i][0])]

    def _days(self, org_id: str, i: int, tz: str) -> Ints:
        key = (org_id, tz, i)
        cached = self._subject_days.get(key)
        if cached is None:
            _, days, costs = self._ledger.by_org[org_id][i]
            first = self.today(tz)[0] - timedelta(days=HISTORY_DAYS)
            offsets = days[self._ledger.row[tz]] - (first - sb.EPOCH_DAY).days
            keep = (offsets >= 0) & (offsets <= HISTORY_DAYS)
            cached = np.zeros(HISTORY_DAYS + 1, dtype=np.int64)
            np.add.at(cached, offsets[keep], costs[keep])
            self._subject_days[key] = cached
        return cached


def _scope_index(subjects: Iterable[rules.Subject]) -> dict[tuple[str, str | None], list[int]]:
    """Subject positions by each scope a budget can name (an org budget: all of them)."""
    index: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, s in enumerate(subjects):
        index[("org", None)].append(i)
        index[("key", s.key_id)].append(i)
        for scope, value in (("team", s.team_id), ("user", s.user_id), ("agent", s.agent_id)):
            if value is not None:
                index[(scope, value)].append(i)
        for tag in set(s.tags):
            index[("tag", tag)].append(i)
    return index


# -- 3. the forecasts, off the event loop -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    budget: rules.Budget
    history: fc.SpendHistory
    outlook: fc.PeriodOutlook
    limit_nanos: int
    window: Window


def jobs_for(
    budgets: Sequence[rules.Budget],
    daily: DailySpend,
    now: datetime,
    raises: Mapping[str, Sequence[rules.Raise]],
) -> list[Job]:
    periods: dict[tuple[str, str, str], tuple[Window, list[date]]] = {}
    jobs: list[Job] = []
    for budget in budgets:
        amount = rules.effective_amount(budget, raises.get(budget.id, ()), now)
        history = daily.history(budget)
        shape = (budget.period, budget.timezone, budget.week_start)
        if shape not in periods:
            window = window_at(now, budget.period, budget.timezone, budget.week_start)
            periods[shape] = (window, days_in_window(window, budget.timezone))
        window, days = periods[shape]
        outlook = fc.outlook_for(budget, amount, window, history.today, days)
        jobs.append(Job(budget, history, outlook, fo.overrun_limit(budget, amount), window))
    return jobs


async def compute(
    jobs: Sequence[Job], now: datetime, executor: Executor | None = None
) -> list[fc.Forecast]:
    """Every job's forecast, in order, in chunks on ``executor`` (default: a thread)."""
    loop = asyncio.get_running_loop()
    chunks = [
        [(j.history, j.outlook) for j in jobs[i : i + CHUNK]] for i in range(0, len(jobs), CHUNK)
    ]
    done = await asyncio.gather(
        *(loop.run_in_executor(executor, fc.forecast_many, c, now) for c in chunks)
    )
    return [f for chunk in done for f in chunk]


# -- 4. stored, with overrun events ----------------------------------------------------------
def reads(budgets: Sequence[rules.Budget]) -> list[list[rules.Budget]]:
    """The budgets whose days are read together (``spend_by_day``): all those that name a
    user, agent, key or tag (the wide rollup) in one read, each zone a day column; the
    others by zone (the narrow rollups: the daily one for the orgs whose daily rows are
    in that zone), in reads of at most ``ID_BATCH`` orgs."""
    wide: list[rules.Budget] = []
    teams: dict[str, dict[str, list[rules.Budget]]] = defaultdict(lambda: defaultdict(list))
    for b in budgets:
        if rules.dimensions(b) <= NARROW_DIMENSIONS:
            teams[b.timezone][b.org_id].append(b)
        else:
            wide.append(b)
    out = [wide] if wide else []
    for _, by_org in sorted(teams.items()):
        orgs = sorted(by_org)
        for i in range(0, len(orgs), ID_BATCH):
            out.append([b for org in orgs[i : i + ID_BATCH] for b in by_org[org]])
    return out


async def read_days(
    engine: AsyncEngine, group: Sequence[rules.Budget], now: datetime
) -> LedgerDays:
    """The days a group of :func:`reads` is forecast from: the lookback window up to now,
    in the group's zones, of its orgs (None past ``ID_BATCH``), its one scope's calls
    when it has one, by what its budgets compare."""
    orgs = {b.org_id for b in group}
    scopes = {rules.scope_field(b) for b in group}
    return await spend_by_day(
        engine,
        now - timedelta(days=HISTORY_DAYS + 2),
        now + timedelta(seconds=1),
        {b.timezone for b in group},
        org_ids=None if len(orgs) > ID_BATCH else sorted(orgs),
        narrow=scopes.pop() if len(scopes) == 1 else None,
        dimensions=frozenset().union(*(rules.dimensions(b) for b in group)),
    )


async def refresh_all(
    engine: AsyncEngine,
    budgets: Sequence[rules.Budget],
    now: datetime,
    *,
    raises: Mapping[str, Sequence[rules.Raise]] | None = None,
    executor: Executor | None = None,
    escalation: Sequence[int] = (),
) -> Refreshed:
    """Forecast every budget given from the reads of their spend (``reads``); store;
    announce overruns (``escalation``: the ``forecast_overrun_escalation`` setting; empty,
    once a period)."""
    if not budgets:
        return Refreshed({}, {})
    loop = asyncio.get_running_loop()
    jobs: list[Job] = []
    pending = []
    for group in reads(budgets):
        daily = DailySpend(await read_days(engine, group, now), now)
        for i in range(0, len(group), CHUNK):  # workers start on a chunk once it is built
            chunk = jobs_for(group[i : i + CHUNK], daily, now, raises or {})
            jobs.extend(chunk)
            pending.append(
                loop.run_in_executor(
                    executor, fc.forecast_many, [(j.history, j.outlook) for j in chunk], now
                )
            )
            await asyncio.sleep(0)
    forecasts = [f for done in await asyncio.gather(*pending) for f in done]
    async with engine.begin() as conn:
        announced = await store(conn, jobs, forecasts, now, escalation)
    return Refreshed({j.budget.id: f for j, f in zip(jobs, forecasts, strict=True)}, announced)


async def store(
    conn: AsyncConnection,
    jobs: Sequence[Job],
    forecasts: Sequence[fc.Forecast],
    now: datetime,
    escalation: Sequence[int] = (),
) -> dict[str, int]:
    """Replace each budget's row; record an event when an overrun band is newly passed:
    band 100 once a period window, and each higher band of ``escalation`` once. The row
    names its window by its UTC bounds (:func:`of_window`), so a budget moved to another
    zone keeps the band announced for the same hours under another date, and announces
    again in a window of other hours under the same date.

    A budget deleted while its forecast was computed is skipped (its row would break the
    foreign key and fail every other budget's); on PostgreSQL the budgets still there are
    key-share locked so a delete waits for this transaction. Rows are written in budget id
    order, so two refreshes at once take their locks in the same order (no deadlock)."""
    t = budget_forecasts
    live: set[str] = set()
    for batch in _batches([j.budget.id for j in jobs]):
        query = sa.select(schema.budgets.c.id).where(schema.budgets.c.id.in_(batch))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(key_share=True)
        live.update(row.id for row in await conn.execute(query))
    pairs = sorted(
        ((j, f) for j, f in zip(jobs, forecasts, strict=True) if j.budget.id in live),
        key=lambda pair: pair[0].budget.id,
    )
    jobs, forecasts = [j for j, _ in pairs], [f for _, f in pairs]
    ids = [j.budget.id for j in jobs]
    previous: dict[str, dict[str, Any]] = {}
    for batch in _batches(ids):
        for stored in await conn.execute(
            sa.select(t.c.budget_id, t.c.period_key, t.c.generated_at, t.c.overrun_band).where(
                t.c.budget_id.in_(batch)
            )
        ):
            previous[stored.budget_id] = dict(stored._mapping)
    announced: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for job, forecast in zip(jobs, forecasts, strict=True):
        if not _fits(forecast_row(job, forecast, None)):
            # a budget stored before the API bounded what a budget may allow
            # (``budget_rules.MAX_LIMIT_NANOS``): its row cannot be stored, and must not
            # fail every other budget's forecast and overrun in this transaction
            log.warning(
                "budget %s: forecast not stored, its figures are past what a row holds "
                "(lower its amount, hard limit or exceptions)",
                job.budget.id,
            )
            continue
        last = previous.get(job.budget.id)
        band = None if last is None or not of_window(last, job.window) else last["overrun_band"]
        fired = [] if band is None else [band]
        new = fo.band_to_announce(fo.band_of(forecast, job.limit_nanos, escalation), fired)
        if new is not None and await announce_overrun(conn, job, forecast, new, now):
            announced[job.budget.id] = new
        rows.append(forecast_row(job, forecast, max([*fired, new or 0]) or None))
    await upsert(conn, t, rows)
    return announced


async def announce_overrun(
    conn: AsyncConnection, job: Job, forecast: fc.Forecast, band: int, now: datetime
) -> bool:
    """Record the event; False if this band was already announced in this window (by
    another replica's refresh, say: the dedup key, which names the window by its UTC
    bounds, makes it once across restarts and replicas)."""
    budget = job.budget
    return (
        await record_event(
            conn,
            "budget.forecast_overrun",
            {
                # the budget, its scope and its window, as every budget.* event names them
                **budget_event_data(budget, job.window),
                "period_key": forecast.period_key,  # ``period``, as first published
                "band_percent": band,
                "limit": "hard_limit" if budget.hard_limit else "amount",
                "limit_usd": format_usd(job.limit_nanos),
                "amount_usd": format_usd(forecast.amount_nanos),
                "spent_usd": format_usd(forecast.spent_nanos),
                "p10_usd": format_usd(forecast.p10_nanos),
                "p50_usd": format_usd(forecast.p50_nanos),
                "p90_usd": format_usd(forecast.p90_nanos),
                "percent_of_budget": str(forecast.percent_of_budget),
                "hard_cap_usd": _usd_or_none(forecast.cap_nanos),
                "hits_hard_cap_on": _iso_or_none(forecast.hits_cap_on),
                "uncapped_p50_usd": format_usd(forecast.uncapped_p50_nanos),
                "method": forecast.method,
                "confidence": forecast.confidence,
                "outlook": fo.outlook_text(forecast),
            },
            now,
            org_id=budget.org_id,
            dedup_key=f"forecast:{budget.id}:{job.window.span}:{band}",
        )
        is not None
    )


def forecast_row(job: Job, f: fc.Forecast, band: int | None) -> dict[str, Any]:
    return {
        "budget_id": job.budget.id,
        "period_key": job.window.span,
        "generated_at": f.generated_at,
        "method": f.method,
        "history_days": f.history_days,
        "spent_nanos": f.spent_nanos,
        "p10_nanos": f.p10_nanos,
        "p50_nanos": f.p50_nanos,
        "p90_nanos": f.p90_nanos,
        "amount_nanos": f.amount_nanos,
        "percent_of_budget": str(f.percent_of_budget),
        "crossings": {name: None if d is None else d.isoformat() for name, d in f.crossings},
        "limit_nanos": job.limit_nanos,
        "overrun_band": band,
        "hard_cap_nanos": f.cap_nanos,
        "uncapped_p50_nanos": f.uncapped_p50_nanos,
    }


#: the range of the forecast row's 64-bit nanos columns
_INT64 = range(-(2**63), 2**63)


def _fits(row: dict[str, Any]) -> bool:
    """Whether every whole number of a forecast row fits its 64-bit column."""
    return all(v in _INT64 for v in row.values() if v.__class__ is int)


def _usd_or_none(nanos: int | None) -> str | None:
    return None if nanos is None else format_usd(nanos)


def _iso_or_none(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def _batches(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + ID_BATCH] for i in range(0, len(ids), ID_BATCH)]


async def stored_forecast(engine: AsyncEngine, budget_id: str) -> dict[str, Any] | None:
    """The latest stored forecast row of a budget, or None."""
    return (await stored_forecasts(engine, [budget_id])).get(budget_id)


async def stored_forecasts(
    engine: AsyncEngine, budget_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """:func:`stored_forecast` of several budgets (a page of them), by budget id; a budget
    with no stored forecast is absent."""
    t = budget_forecasts
    out: dict[str, dict[str, Any]] = {}
    async with engine.connect() as conn:
        for batch in _batches(list(dict.fromkeys(budget_ids))):
            for row in await conn.execute(sa.select(t).where(t.c.budget_id.in_(batch))):
                out[row.budget_id] = dict(row._mapping)
    return out


def crossing_dates(row: Mapping[str, Any]) -> dict[str, date | None]:
    return {k: None if v is None else date.fromisoformat(v) for k, v in row["crossings"].items()}


def of_window(row: Mapping[str, Any], window: Window) -> bool:
    """Whether a stored forecast row is of ``window``: a row names its window by its UTC
    bounds; one stored before it did, by its local date (``Window.key``), generated in
    ``window`` (as it was, unless the budget's zone moved before the next refresh
    rewrote it: its announced band then holds for a window of that date with that
    instant)."""
    key = row["period_key"]
    return key == window.span or (key == window.key and window.contains(row["generated_at"]))


def forecast_of(row: Mapping[str, Any], window: Window) -> fc.Forecast:
    """A stored row of ``window`` (:func:`of_window`) as the forecast it was, its period
    named by the window's local date (rows from before revision 0012 have no cap)."""
    dates = crossing_dates(row)
    cap = row.get("hard_cap_nanos")
    p50 = int(row["p50_nanos"])
    uncapped = row.get("uncapped_p50_nanos")
    return fc.Forecast(
        period_key=window.key,
        spent_nanos=int(row["spent_nanos"]),
        p10_nanos=int(row["p10_nanos"]),
        p50_nanos=p50,
        p90_nanos=int(row["p90_nanos"]),
        amount_nanos=int(row["amount_nanos"]),
        percent_of_budget=Decimal(row["percent_of_budget"]),
        crossings=tuple(dates.items()),
        method=row["method"],
        history_days=int(row["history_days"]),
        generated_at=row["generated_at"],
        cap_nanos=None if cap is None else int(cap),
        uncapped_p50_nanos=p50 if uncapped is None else int(uncapped),
        # the hard level is the cap: the day P50 reaches it
        hits_cap_on=None
        if cap is None
        else next((d for name, d in dates.items() if name.startswith("hard:")), None),
    )


# -- 5. on a schedule --------------------------------------------------------------------------
Snapshot = Callable[[datetime], Awaitable[PolicySnapshot]]


#: the scheduled refresh's lease, taken for this share of the interval (so the replica that
#: wakes first in each interval refreshes, and no two refresh within 0.8 of an interval)
LEASE = "forecasts"
LEASE_SHARE = 0.8


async def refresh_loop(
    engine: AsyncEngine,
    snapshot: Snapshot,
    clock: Clock,
    every_seconds: float,
    executor: Executor | None = None,
    *,
    holder: str,
    stop: Stop | None = None,
    escalation: Sequence[int] = (),
) -> None:
    """Refresh every budget's forecast every ``every_seconds`` (run as a background task);
    ``snapshot`` is ``PolicyStore.snapshot``. With several replicas, only the one holding
    the lease (``holder`` names this one) refreshes each time; it renews the lease while
    its refresh runs (``leases.while_held``), so a slow refresh is never run twice at once.
    Ends after the refresh in progress once ``stop`` is set. ``escalation``: as in
    :func:`refresh_all`."""
    ttl = timedelta(seconds=every_seconds * LEASE_SHARE)
    stop = stop or Stop()
    while await stop.pause(every_seconds):
        try:
            now = clock.now()
            if not await take_lease(engine, LEASE, holder, now, ttl):
                continue

            async def refresh(now: datetime = now) -> None:
                policy = await snapshot(now)
                await refresh_all(
                    engine,
                    policy.budgets,
                    now,
                    raises=policy.raises,
                    executor=executor,
                    escalation=escalation,
                )

            # a refresh slower than the lease keeps it: no second replica starts beside it
            await while_held(engine, LEASE, holder, clock, ttl, refresh(), every_seconds / 4)
        except Exception:  # outermost layer of a background loop: log and keep going
            log.exception("forecast refresh failed")
