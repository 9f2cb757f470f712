"""Forecasts, the I/O side: budgets' daily spend from the ledger, the latest forecast per
budget, and the ``budget.forecast_overrun`` events. The arithmetic is in
``spendgate.core.forecasting``.

    refresh_all(engine, budgets, now)
      1. one pass over the ledger of the lookback window, summed in SQL by every attribute
         a budget can filter on and by UTC time bucket (an hour; 15 minutes when a budget's
         zone is off the hour)
      2. per budget, in Python: the subjects it counts (``budget_rules.applies``), their
         buckets turned into the budget's local days
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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

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
from spendgate.core.money import format_usd
from spendgate.stopping import Stop
from spendgate.store import schema
from spendgate.store.cost_sums import cost_from_sums, split_cost_sum
from spendgate.store.database import upsert
from spendgate.store.events import record_event
from spendgate.store.leases import take_lease, while_held
from spendgate.store.policies import PolicySnapshot
from spendgate.store.rollups import usage_rollup
from spendgate.store.schema import JSONType, UTCDateTime

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
class LedgerBuckets:
    """Settled spend of the lookback window: per subject, (bucket numbers, nanos)."""

    bucket_seconds: int
    by_org: dict[str, list[tuple[rules.Subject, Ints, Ints]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refreshed:
    forecasts: dict[str, fc.Forecast]
    announced: dict[str, int]


# -- 1. the ledger, once ----------------------------------------------------------------------
def bucket_seconds(zones: Iterable[str], start: datetime, end: datetime) -> int:
    """3600, or 900 when some zone's offset is not whole hours in ``[start, end]``."""
    for tz in set(zones):
        zone, at = ZoneInfo(tz), start
        while at <= end + timedelta(days=1):
            offset = at.astimezone(zone).utcoffset()
            if offset is not None and offset.total_seconds() % 3600:
                return 900
            at += timedelta(days=1)
    return 3600


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


def _ledger_query(
    dialect: str,
    start: datetime,
    end: datetime,
    seconds: int,
    org_ids: Sequence[str] | None,
    narrow: tuple[str, str] | None = None,
) -> sa.Select[Any]:
    """The ledger rows started in ``[start, end)``, summed by ``DIMS`` and bucket."""
    t = schema.ledger
    dims = [t.c[d] for d in DIMS]
    bucket = _bucket(dialect, t.c.started_at, seconds)
    query = (
        sa.select(*dims, bucket, sa.func.sum(t.c.cost_nanos))
        .where(t.c.started_at >= start, t.c.started_at < end, t.c.cost_nanos.is_not(None))
        .group_by(*dims, bucket)
    )
    if org_ids is not None:
        query = query.where(t.c.org_id.in_(sorted(set(org_ids))))
    if narrow is not None:
        query = query.where(t.c[narrow[0]] == narrow[1])
    return query


async def ledger_buckets(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    seconds: int,
    org_ids: Sequence[str] | None = None,
) -> LedgerBuckets:
    """One grouped pass over the ledger rows started in ``[start, end)``."""
    grouped: dict[tuple[Any, ...], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    query = _ledger_query(engine.dialect.name, start, end, seconds, org_ids)
    async with engine.connect() as conn:
        result = await conn.execute(query)
        for org, team, user, agent, key, tags, provider, model, kind, b, cost in result:
            entry = grouped[(org, team, user, agent, key, tuple(tags or ()), provider, model, kind)]
            entry[0].append(int(b))
            entry[1].append(int(cost))
    return _as_buckets(seconds, grouped)


def _as_buckets(
    seconds: int, grouped: Mapping[tuple[Any, ...], tuple[list[int], list[int]]]
) -> LedgerBuckets:
    out = LedgerBuckets(seconds)
    for dims_key, (buckets, costs) in grouped.items():
        subject = rules.Subject(*dims_key)
        out.by_org.setdefault(subject.org_id, []).append(
            (subject, np.asarray(buckets, dtype=np.int64), np.asarray(costs, dtype=np.int64))
        )
    return out


async def stored_buckets(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    seconds: int,
    org_id: str,
    narrow: tuple[str, str] | None = None,
) -> LedgerBuckets:
    """What ``ledger_buckets`` sums of one org, to the nano, mostly from the wide rollup:
    it holds every attribute a budget can filter on (the tag set whole) per 15-minute
    bucket, and is written in the ledger batch's own transaction, so its whole buckets
    inside ``[start, end)`` are read from it (a row per subject and bucket, not per call)
    and only the part buckets at either end from the ledger. A subject's tags are its tag
    set (sorted, once each). ``narrow``: ``(field, value)`` of ``budget_rules.scope_field``,
    read only those calls; the caller still matches each subject (``budget_rules.applies``)."""
    if seconds % sb.BUCKET_SECONDS:
        raise ValueError(f"{seconds} s is not whole rollup buckets")
    step = timedelta(seconds=sb.BUCKET_SECONDS)
    first = -((EPOCH - start) // step)  # the first bucket starting at or after start
    last = (end - EPOCH) // step  # the bucket holding end (its rows are past end)
    ledger = [(start, end)]
    if first < last:
        ledger = [
            (a, b) for a, b in ((start, first * step + EPOCH), (last * step + EPOCH, end)) if a < b
        ]
    grouped: dict[tuple[Any, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    async with engine.connect() as conn:
        for a, b in ledger:
            query = _ledger_query(engine.dialect.name, a, b, seconds, [org_id], narrow)
            for *dims, bucket, cost in await conn.execute(query):
                grouped[_subject_key(dims, dims[5] or ())][int(bucket)] += int(cost)
        if first < last:
            query = _rollup_query(first, last, seconds, org_id, narrow)
            keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # a subject's rows share one
            for row in await conn.execute(query):
                dims = tuple(row[:-3])
                key = keys.get(dims)
                if key is None:
                    key = keys[dims] = _subject_key([v or None for v in dims], json.loads(dims[5]))
                grouped[key][int(row[-3])] += cost_from_sums(row[-2], row[-1])
    return _as_buckets(seconds, {k: (list(v), list(v.values())) for k, v in grouped.items()})


def _subject_key(dims: Sequence[Any], tags: Iterable[str]) -> tuple[Any, ...]:
    """``DIMS`` as a subject's fields, the tags as a sorted set (the rollup's tag set)."""
    return (dims[0], *dims[1:5], tuple(sorted(set(tags))), *dims[6:])


def _rollup_query(
    first: int, last: int, seconds: int, org_id: str, narrow: tuple[str, str] | None
) -> sa.Select[Any]:
    """The wide rollup's buckets ``[first, last)`` of the org, summed by ``DIMS`` and
    ``seconds``-long bucket, the cost as whole dollars and nanos (exact)."""
    t = usage_rollup
    dims = [t.c[d] for d in DIMS]
    bucket = t.c.bucket // sa.literal_column(str(seconds // sb.BUCKET_SECONDS), sa.Integer)
    query = (
        sa.select(*dims, bucket, *split_cost_sum(t.c.cost_usd, t.c.cost_nanos))
        .where(t.c.org_id == org_id, t.c.bucket >= first, t.c.bucket < last)
        .group_by(*dims, bucket)
    )
    if narrow is not None:
        query = query.where(t.c[narrow[0]] == narrow[1])
    return query


# -- 2. each budget's local days ------------------------------------------------------------
class DailySpend:
    """Budgets' spend per local day, from one ``LedgerBuckets`` (caches per zone and subject)."""

    def __init__(self, ledger: LedgerBuckets, now: datetime) -> None:
        self._ledger = ledger
        self._now = now
        self._index: dict[str, dict[tuple[str, str | None], list[int]]] = {}
        self._zone_days: dict[str, tuple[Ints, Ints]] = {}
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
            _, buckets, costs = self._ledger.by_org[org_id][i]
            known, day_of = self._zone_table(tz)
            offsets = day_of[np.searchsorted(known, buckets)]
            keep = (offsets >= 0) & (offsets <= HISTORY_DAYS)
            cached = np.zeros(HISTORY_DAYS + 1, dtype=np.int64)
            np.add.at(cached, offsets[keep], costs[keep])
            self._subject_days[key] = cached
        return cached

    def _zone_table(self, tz: str) -> tuple[Ints, Ints]:
        """Every bucket in the ledger, and its local day counted from the first day."""
        table = self._zone_days.get(tz)
        if table is None:
            every = [b for rows in self._ledger.by_org.values() for _, b, _ in rows]
            known = np.unique(np.concatenate(every)) if every else np.zeros(0, dtype=np.int64)
            zone, size = ZoneInfo(tz), self._ledger.bucket_seconds
            first = self.today(tz)[0] - timedelta(days=HISTORY_DAYS)
            day_of = np.array(
                [
                    (
                        datetime.fromtimestamp(int(b) * size, UTC).astimezone(zone).date() - first
                    ).days
                    for b in known
                ],
                dtype=np.int64,
            )
            table = self._zone_days[tz] = (known, day_of)
        return table


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
        jobs.append(Job(budget, history, outlook, fo.overrun_limit(budget, amount)))
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
async def refresh_all(
    engine: AsyncEngine,
    budgets: Sequence[rules.Budget],
    now: datetime,
    *,
    raises: Mapping[str, Sequence[rules.Raise]] | None = None,
    executor: Executor | None = None,
    escalation: Sequence[int] = (),
) -> Refreshed:
    """Forecast every budget given from one pass over the ledger; store; announce overruns
    (``escalation``: the ``forecast_overrun_escalation`` setting; empty, once a period)."""
    if not budgets:
        return Refreshed({}, {})
    zones = {b.timezone for b in budgets}
    start = now - timedelta(days=HISTORY_DAYS + 2)
    ledger = await ledger_buckets(
        engine,
        start,
        now + timedelta(seconds=1),
        bucket_seconds(zones, start, now),
        org_ids=None if len(budgets) > ID_BATCH else [b.org_id for b in budgets],
    )
    daily, loop = DailySpend(ledger, now), asyncio.get_running_loop()
    jobs: list[Job] = []
    pending = []
    for i in range(0, len(budgets), CHUNK):  # workers start on a chunk as soon as it is built
        chunk = jobs_for(budgets[i : i + CHUNK], daily, now, raises or {})
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
    band 100 once a period, and each higher band of ``escalation`` once.

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
    previous: dict[str, tuple[str, int | None]] = {}
    for batch in _batches(ids):
        for row in await conn.execute(
            sa.select(t.c.budget_id, t.c.period_key, t.c.overrun_band).where(
                t.c.budget_id.in_(batch)
            )
        ):
            previous[row.budget_id] = (row.period_key, row.overrun_band)
    announced: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for job, forecast in zip(jobs, forecasts, strict=True):
        key, band = previous.get(job.budget.id, ("", None))
        fired = [band] if band is not None and key == forecast.period_key else []
        new = fo.band_to_announce(fo.band_of(forecast, job.limit_nanos, escalation), fired)
        if new is not None and await announce_overrun(conn, job, forecast, new, now):
            announced[job.budget.id] = new
        rows.append(forecast_row(job, forecast, max([*fired, new or 0]) or None))
    await upsert(conn, t, rows)
    return announced


async def announce_overrun(
    conn: AsyncConnection, job: Job, forecast: fc.Forecast, band: int, now: datetime
) -> bool:
    """Record the event; False if this band was already announced this period (by another
    replica's refresh, say: the dedup key makes it once across restarts and replicas)."""
    budget = job.budget
    return (
        await record_event(
            conn,
            "budget.forecast_overrun",
            {
                "budget_id": budget.id,
                "budget_name": budget.name,
                "scope_type": budget.scope_type,
                "scope_id": budget.scope_id,
                "tag": budget.tag,
                "period_key": forecast.period_key,
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
            dedup_key=f"forecast:{budget.id}:{forecast.period_key}:{band}",
        )
        is not None
    )


def forecast_row(job: Job, f: fc.Forecast, band: int | None) -> dict[str, Any]:
    return {
        "budget_id": job.budget.id,
        "period_key": f.period_key,
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


def forecast_of(row: Mapping[str, Any]) -> fc.Forecast:
    """A stored row as the forecast it was (rows from before revision 0012 have no cap)."""
    dates = crossing_dates(row)
    cap = row.get("hard_cap_nanos")
    p50 = int(row["p50_nanos"])
    uncapped = row.get("uncapped_p50_nanos")
    return fc.Forecast(
        period_key=row["period_key"],
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
