"""Where the console reads spend from: the one adapter between /usage and the ledger.

It calls the function ``GET /admin/usage`` calls (``store.ledger.usage_report``), so the
page's totals are the API's. When usage moves onto rollups (with the org's reporting
zone, time grouping and top-N done by the store), only this module changes.

For now: spend is bucketed by UTC day in the database and folded into weeks (starting
Monday) or months here; filters on a dimension are applied by grouping on it too and
keeping the matching rows (exact: money is summed in integer nano-dollars).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store.ledger import usage_report

#: the dimensions /usage groups and filters by (``tag`` comes with the rollups)
DIMENSIONS = ("team", "user", "agent", "key", "provider", "model")
GRAINS = ("day", "week", "month")
#: the zone buckets are drawn in (the org's reporting zone once the rollups land)
REPORTING_ZONE = "UTC"


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


def bucket_of(day: date, grain: str) -> date:
    if grain == "week":
        return day - timedelta(days=day.weekday())
    if grain == "month":
        return day.replace(day=1)
    return day


def buckets_between(start: date, end: date, grain: str) -> list[date]:
    """Every bucket that starts in or covers ``[start, end)``, in order."""
    out: list[date] = []
    day = start
    while day < end:
        first = bucket_of(day, grain)
        if not out or out[-1] != first:
            out.append(first)
        day += timedelta(days=1)
    return out


async def usage_series(engine: AsyncEngine, q: UsageQuery) -> UsageSeries:
    """The spend of ``q`` per time bucket and group."""
    filters = {k: v for k, v in q.filters.items() if k in DIMENSIONS and v}
    dims = list(dict.fromkeys(["day", q.group_by, *filters]))
    rows = await usage_report(
        engine, dims, q.start, q.end, q.org_id, team_ids=q.team_ids, user_id=q.user_id
    )
    cells: dict[tuple[date, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    requests: dict[str, int] = defaultdict(int)
    unpriced = 0
    for row in rows:
        if any(str(row[k]) != v for k, v in filters.items()):
            continue
        group = "(none)" if row[q.group_by] is None else str(row[q.group_by])
        bucket = bucket_of(date.fromisoformat(str(row["day"])), q.grain)
        cells[bucket, group] += int(row["cost_nanos"])
        totals[group] += int(row["cost_nanos"])
        requests[group] += int(row["requests"])
        unpriced += int(row["unpriced_requests"])
    buckets = buckets_between(q.start.date(), q.end.date(), q.grain)
    return UsageSeries(REPORTING_ZONE, buckets, dict(cells), dict(totals), dict(requests), unpriced)
