"""Where the console reads spend from: the one adapter between the pages and the store.

It calls the function ``GET /admin/usage`` calls (``store.showback.usage_report``, read
from the rollups), so the page's totals are the API's: local days in the zone asked
for (the org's reporting zone, or a budget's), folded into weeks (from the week start
asked for) or months here; filters and the member's own-calls view are the report's
own (exact: money is summed in integer nano-dollars).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store.showback import usage_report

#: the dimensions /usage groups and filters by
DIMENSIONS = ("team", "user", "agent", "key", "tag", "provider", "model")
GRAINS = ("day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: datetime
    end: datetime
    group_by: str  # "": not grouped (each call counted once)
    grain: str = "day"
    org_id: str | None = None
    team_ids: Collection[str] | None = None
    user_id: str | None = None
    filters: Mapping[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    week_start: str = "monday"


@dataclass(frozen=True, slots=True)
class UsageSeries:
    """Spend per bucket (its first day) and group, and each group's total, in nanos; of
    each group's calls, those billed on an estimate and their cost (part of its total),
    and those of unknown price (``unpriced_calls``: not in any figure, $0 in the ledger)."""

    zone: str
    buckets: list[date]
    cells: dict[tuple[date, str], int]
    totals: dict[str, int]
    requests: dict[str, int]
    unpriced_calls: dict[str, int] = field(default_factory=dict)
    estimated_calls: dict[str, int] = field(default_factory=dict)
    estimated: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def unpriced(self) -> int:
        return sum(self.unpriced_calls.values())


def bucket_of(day: date, grain: str, week_start: str = "monday") -> date:
    if grain == "week":
        return day - timedelta(days=(day.weekday() - WEEKDAYS.index(week_start)) % 7)
    if grain == "month":
        return day.replace(day=1)
    return day


def buckets_between(start: date, end: date, grain: str, week_start: str = "monday") -> list[date]:
    """Every bucket that starts in or covers ``[start, end)``, in order."""
    out: list[date] = []
    day = start
    while day < end:
        first = bucket_of(day, grain, week_start)
        if not out or out[-1] != first:
            out.append(first)
        day += timedelta(days=1)
    return out


#: a day counts as closed (its figures are kept by :class:`ClosedDays`) once it ended
#: this long ago: calls that started in it and ran past midnight have landed by then
CLOSED_AFTER = timedelta(hours=1)
#: how long the figures of a closed day are reused: a late write (a spool replayed after a
#: database outage, ``spendgate usage rebuild``) shows on the pages at most this late
CLOSED_DAY_SECONDS = 60.0
#: at most this many report rows are kept (the least recently used queries go first)
MAX_KEPT_ROWS = 200_000

Rows = list[dict[str, Any]]


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=zone)


class ClosedDays:
    """The report rows of days that are over, per query (everything that decides them:
    who asks, the filters, the zone, the grouping) and local day, reused for
    :data:`CLOSED_DAY_SECONDS`. A page of 90 days then asks the rollups only for the
    days it has not seen lately and for today, in at most two reports."""

    def __init__(self, seconds: float = CLOSED_DAY_SECONDS, max_rows: int = MAX_KEPT_ROWS):
        self.seconds, self.max_rows = seconds, max_rows
        self._kept: OrderedDict[tuple[Any, ...], dict[date, tuple[float, Rows]]] = OrderedDict()
        self._rows = 0

    @staticmethod
    def key(q: UsageQuery) -> tuple[Any, ...]:
        teams = None if q.team_ids is None else tuple(sorted(q.team_ids))
        filters = tuple(sorted((k, v) for k, v in q.filters.items()))
        return (q.org_id, teams, q.user_id, filters, q.timezone, q.group_by)

    async def rows(
        self, engine: AsyncEngine, q: UsageQuery, first: date, end: date, mono: float
    ) -> Rows:
        """The rows of the local days ``[first, end)``, all closed: kept ones, and the
        others from one report."""
        zone = ZoneInfo(q.timezone)
        key = self.key(q)
        kept = self._kept.setdefault(key, {})
        self._kept.move_to_end(key)
        days = [first + timedelta(days=n) for n in range((end - first).days)]
        missing = [d for d in days if d not in kept or mono - kept[d][0] > self.seconds]
        if missing:
            low, high = missing[0], missing[-1] + timedelta(days=1)
            fresh: dict[date, Rows] = {
                low + timedelta(days=n): [] for n in range((high - low).days)
            }
            for row in await _report(engine, q, _midnight(low, zone), _midnight(high, zone)):
                fresh[date.fromisoformat(str(row["day"]))].append(row)
            for day, rows in fresh.items():
                self._rows += len(rows) - len(kept[day][1] if day in kept else ())
                kept[day] = (mono, rows)
            self._trim(key)
        return [row for d in days for row in kept[d][1]]

    def _trim(self, current: tuple[Any, ...]) -> None:
        while self._rows > self.max_rows and len(self._kept) > 1:
            oldest = next(iter(self._kept))
            if oldest == current:
                self._kept.move_to_end(current)
                continue
            self._rows -= sum(len(rows) for _, rows in self._kept.pop(oldest).values())


async def _report(engine: AsyncEngine, q: UsageQuery, start: datetime, end: datetime) -> Rows:
    filters = {k: [v] for k, v in q.filters.items() if k in DIMENSIONS and v}
    return await usage_report(
        engine,
        ["day", q.group_by] if q.group_by else ["day"],
        start,
        end,
        q.org_id,
        team_ids=q.team_ids,
        timezone=q.timezone,
        filters=filters,
        user_id=q.user_id,
    )


async def _day_rows(
    engine: AsyncEngine,
    q: UsageQuery,
    closed: ClosedDays | None,
    now: datetime | None,
    mono: float,
) -> Rows:
    """The report rows of ``q`` per local day: closed days from ``closed``, the rest (today,
    and yesterday for an hour past midnight) read now."""
    zone = ZoneInfo(q.timezone)
    first = q.start.astimezone(zone).date()
    if closed is None or now is None or _midnight(first, zone) != q.start:
        return await _report(engine, q, q.start, q.end)
    open_day = (now - CLOSED_AFTER).astimezone(zone).date()  # the first day not closed
    closed_end = min(open_day, q.end.astimezone(zone).date())
    rows: Rows = []
    if first < closed_end:
        rows += await closed.rows(engine, q, first, closed_end, mono)
    live_start = max(q.start, _midnight(closed_end, zone))
    if live_start < q.end:
        rows += await _report(engine, q, live_start, q.end)
    return rows


async def usage_series(
    engine: AsyncEngine,
    q: UsageQuery,
    closed: ClosedDays | None = None,
    now: datetime | None = None,
    mono: float = 0.0,
) -> UsageSeries:
    """The spend of ``q`` per time bucket and group; with ``closed`` (and the time ``now``
    and the clock's ``mono``), days that ended before today are reused from it."""
    rows = await _day_rows(engine, q, closed, now, mono)
    cells: dict[tuple[date, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    requests: dict[str, int] = defaultdict(int)
    estimated_calls: dict[str, int] = defaultdict(int)
    estimated: dict[str, int] = defaultdict(int)
    unpriced: dict[str, int] = defaultdict(int)
    for row in rows:
        value = row[q.group_by] if q.group_by else ""
        group = "(none)" if value is None else str(value)
        bucket = bucket_of(date.fromisoformat(str(row["day"])), q.grain, q.week_start)
        cells[bucket, group] += int(row["cost_nanos"])
        totals[group] += int(row["cost_nanos"])
        requests[group] += int(row["requests"])
        unpriced[group] += int(row["unpriced_requests"])
        estimated_calls[group] += int(row["estimated_calls"])
        estimated[group] += int(row["estimated_nanos"])
    zone = ZoneInfo(q.timezone)
    first, last = q.start.astimezone(zone).date(), q.end.astimezone(zone).date()
    buckets = buckets_between(first, last, q.grain, q.week_start)
    return UsageSeries(
        q.timezone, buckets, dict(cells), dict(totals), dict(requests), dict(unpriced),
        dict(estimated_calls), dict(estimated),
    )  # fmt: skip
