"""Where the console reads spend from: the one adapter between the pages and the store.

It calls the function ``GET /admin/usage`` calls (``store.showback.usage_report``, read
from the rollups), so the page's totals are the API's: local days in the zone asked
for (the org's reporting zone, or a budget's), folded into weeks (from the week start
asked for) or months here; filters and the member's own-calls view are the report's
own (exact: money is summed in integer nano-dollars).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
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
    group_by: str
    grain: str = "day"
    org_id: str | None = None
    team_ids: Collection[str] | None = None
    user_id: str | None = None
    filters: Mapping[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    week_start: str = "monday"


@dataclass(frozen=True, slots=True)
class UsageSeries:
    """Spend per bucket (its first day) and group, and each group's total, in nanos."""

    zone: str
    buckets: list[date]
    cells: dict[tuple[date, str], int]
    totals: dict[str, int]
    requests: dict[str, int]
    unpriced: int

    @property
    def total(self) -> int:
        return sum(self.totals.values())


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


async def usage_series(engine: AsyncEngine, q: UsageQuery) -> UsageSeries:
    """The spend of ``q`` per time bucket and group."""
    filters = {k: [v] for k, v in q.filters.items() if k in DIMENSIONS and v}
    rows = await usage_report(
        engine,
        ["day", q.group_by],
        q.start,
        q.end,
        q.org_id,
        team_ids=q.team_ids,
        timezone=q.timezone,
        filters=filters,
        user_id=q.user_id,
    )
    cells: dict[tuple[date, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    requests: dict[str, int] = defaultdict(int)
    unpriced = 0
    for row in rows:
        group = "(none)" if row[q.group_by] is None else str(row[q.group_by])
        bucket = bucket_of(date.fromisoformat(str(row["day"])), q.grain, q.week_start)
        cells[bucket, group] += int(row["cost_nanos"])
        totals[group] += int(row["cost_nanos"])
        requests[group] += int(row["requests"])
        unpriced += int(row["unpriced_requests"])
    zone = ZoneInfo(q.timezone)
    first, last = q.start.astimezone(zone).date(), q.end.astimezone(zone).date()
    buckets = buckets_between(first, last, q.grain, q.week_start)
    return UsageSeries(q.timezone, buckets, dict(cells), dict(totals), dict(requests), unpriced)
