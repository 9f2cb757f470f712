"""Showback arithmetic: 15-minute buckets, local periods over them, top-N folding and
exact splits. Pure: no I/O, no clock.

**Buckets.** Spend is rolled up per 15 minutes of UTC (``bucket = epoch seconds // 900``).
Every UTC offset in use since 1970 is a whole number of quarter hours (India +5:30,
Nepal +5:45, Lord Howe +10:30/+11), so every local day, hour, week and month begins on a
bucket boundary and is a whole number of buckets in every zone: sums over days add up
to the month, and the month adds up to the ledger, to the nano-dollar.

**Local buckets.** A bucket's *local* index is its index plus the zone's offset (in
buckets) at that instant: ``local // 4`` is the local hour, ``local // 96`` the local
date (days since 1970-01-01). Inside a query range the offset changes only at the
zone's transitions, so :func:`offset_segments` gives a short list the store turns into
one ``CASE`` — and the database groups by local day without a calendar table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from spendgate.core.budget_windows import WEEKDAYS

BUCKET_SECONDS = 900
BUCKETS_PER_HOUR = 4
BUCKETS_PER_DAY = 96
EPOCH_DAY = date(1970, 1, 1)

Grain = Literal["hour", "day", "week", "month"]
GRAINS: tuple[Grain, ...] = get_args(Grain)
#: the dimensions a report may group and filter by (``tag`` reads the tag rollup)
DIMENSIONS = ("org", "team", "user", "agent", "key", "tag", "provider", "model", "kind", "status")
#: every name ``group_by`` takes: the dimensions, the time grains, and ``day`` (a grain)
GROUP_NAMES = (*DIMENSIONS, *GRAINS)


def bucket_of(at: datetime) -> int:
    """The 15-minute bucket holding the aware instant ``at``."""
    return int(at.timestamp()) // BUCKET_SECONDS


def bucket_start(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket * BUCKET_SECONDS, UTC)


def on_boundary(at: datetime) -> bool:
    """Whether ``at`` starts a bucket (a report's start and end must)."""
    return at.timestamp() % BUCKET_SECONDS == 0


def _offset_buckets(zone: ZoneInfo, bucket: int) -> int:
    offset = bucket_start(bucket).astimezone(zone).utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    if seconds % BUCKET_SECONDS:
        raise ValueError(f"{zone.key} is {seconds} s off UTC here: not whole quarter hours")
    return seconds // BUCKET_SECONDS


@dataclass(frozen=True, slots=True)
class Segment:
    """Buckets ``[first, end)`` share one UTC offset of ``offset`` buckets."""

    first: int
    end: int
    offset: int


def offset_segments(first: int, end: int, tz: str) -> list[Segment]:
    """The runs of constant UTC offset that cover buckets ``[first, end)`` in zone ``tz``.

    Steps a day at a time (the last step to the range's last bucket, ``end - 1``) and
    binary-searches each change to its bucket: transitions are hours apart, never two
    within a day."""
    zone = ZoneInfo(tz)
    if end <= first:
        return [Segment(first, first, _offset_buckets(zone, first))]
    segments: list[Segment] = []
    start, offset = first, _offset_buckets(zone, first)
    probe = first
    while probe < end - 1:
        step = min(probe + BUCKETS_PER_DAY, end - 1)
        ahead = _offset_buckets(zone, step)
        if ahead != offset:
            low, high = probe, step  # offset(low) == offset, offset(high) != offset
            while high - low > 1:
                middle = (low + high) // 2
                if _offset_buckets(zone, middle) == offset:
                    low = middle
                else:
                    high = middle
            segments.append(Segment(start, high, offset))
            start, offset = high, _offset_buckets(zone, high)
            probe = high
            continue
        probe = step
    segments.append(Segment(start, end, offset))
    return segments


@lru_cache(maxsize=1 << 16)
def local_day_of(bucket: int, tz: str) -> int:
    """The local day number (days since 1970-01-01) of a bucket in zone ``tz``: what the
    daily rollup files it under, the same ``(bucket + offset) // 96`` a report groups by."""
    return (bucket + _offset_buckets(ZoneInfo(tz), bucket)) // BUCKETS_PER_DAY


#: buckets looked at either side of a bound to tell whether it starts a local day: more
#: than any jump of a zone's offset (Samoa skipped a whole day in 2011: 96 buckets)
_DAY_WINDOW = 2 * BUCKETS_PER_DAY


def day_boundary(bucket: int, tz: str) -> int | None:
    """The local day that starts at ``bucket`` in zone ``tz`` — every bucket before it
    (nearby) falls on an earlier local day, every bucket from it on a later or the same
    one — or None when ``bucket`` cuts a local day."""
    before, after = None, None
    for s in offset_segments(bucket - _DAY_WINDOW, bucket + _DAY_WINDOW, tz):
        if s.first < bucket:  # the last bucket of this segment before ``bucket``
            day = (min(s.end, bucket) - 1 + s.offset) // BUCKETS_PER_DAY
            before = day if before is None else max(before, day)
        if s.end > bucket:
            day = (max(s.first, bucket) + s.offset) // BUCKETS_PER_DAY
            after = day if after is None else min(after, day)
    assert before is not None and after is not None
    return after if before < after else None


def first_bucket_of_day(day: int, tz: str) -> int:
    """The first bucket whose local day in ``tz`` is ``day`` or later."""
    low = day * BUCKETS_PER_DAY - _DAY_WINDOW
    for s in offset_segments(low, low + 2 * _DAY_WINDOW, tz):
        candidate = max(s.first, day * BUCKETS_PER_DAY - s.offset)
        if candidate < s.end:
            return candidate
    raise ValueError(f"no bucket of local day {day} in {tz}")  # pragma: no cover


def local_day(day_number: int) -> date:
    return EPOCH_DAY + timedelta(days=day_number)


def period_label(grain: Grain, local_unit: int, week_start: str = "monday") -> str:
    """The name of the period holding a local hour (``grain == "hour"``) or local day
    number (any other grain): ``2026-03-10T14:00``, ``2026-03-10``, ``2026-03-09/P1W``
    (ISO interval from the week's first local date), ``2026-03``."""
    if grain == "hour":
        day = local_day(local_unit // 24)
        return f"{day.isoformat()}T{local_unit % 24:02d}:00"
    day = local_day(local_unit)
    if grain == "day":
        return day.isoformat()
    if grain == "week":
        first = day - timedelta(days=(day.weekday() - WEEKDAYS.index(week_start)) % 7)
        return f"{first.isoformat()}/P1W"
    return f"{day.year:04d}-{day.month:02d}"


def split_exact(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` nanos split in proportion to ``weights`` (integers, not all zero), by
    largest remainder: the parts are integers and add up to ``total`` exactly. Ties in
    remainder go to the earlier weight, so the split is the same on every run."""
    whole = sum(weights)
    if whole <= 0:
        raise ValueError("weights must have a positive sum")
    parts = [total * w // whole for w in weights]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def fold_top(
    rows: list[dict[str, object]], group_dims: Sequence[str], time_dim: str | None, top: int
) -> list[dict[str, object]]:
    """Keep the ``top`` groups (over ``group_dims``) by total cost; fold the rest into
    one ``"other"`` group per period. Sums are unchanged by construction."""
    if top <= 0 or not group_dims:
        return rows
    totals: dict[tuple[object, ...], tuple[int, int]] = {}
    for row in rows:
        key = tuple(row[d] for d in group_dims)
        cost, calls = totals.get(key, (0, 0))
        totals[key] = (cost + int(row["cost_nanos"]), calls + int(row["requests"]))  # type: ignore[call-overload]
    ranked = sorted(totals, key=lambda k: (-totals[k][0], -totals[k][1], tuple(map(str, k))))
    keep = set(ranked[:top])
    if len(keep) == len(totals):
        return rows
    out = [r for r in rows if tuple(r[d] for d in group_dims) in keep]
    other: dict[object, dict[str, object]] = {}
    for row in rows:
        if tuple(row[d] for d in group_dims) in keep:
            continue
        period = row[time_dim] if time_dim else None
        into = other.get(period)
        if into is None:
            into = other[period] = {**row, **dict.fromkeys(group_dims, "other"), "other": True}
            continue
        for name, value in row.items():
            if isinstance(value, int) and not isinstance(value, bool) and name not in group_dims:
                into[name] = int(into[name]) + value  # type: ignore[call-overload]
    out.extend(other.values())
    return out


def add_cumulative(
    rows: list[dict[str, object]], group_dims: Sequence[str], time_dim: str
) -> list[dict[str, object]]:
    """Rows in period order with ``cumulative_cost_nanos``: the group's spend up to and
    including the row's period. :func:`fold_top`'s ``"other"`` row is a group of its own,
    apart from a group whose name is ``"other"`` (a tag, a model)."""
    rows.sort(key=lambda r: (str(r[time_dim]), tuple(str(r[d]) for d in group_dims)))
    running: dict[tuple[object, ...], int] = {}
    for row in rows:
        key = (bool(row.get("other")), *(row[d] for d in group_dims))
        running[key] = running.get(key, 0) + int(row["cost_nanos"])  # type: ignore[call-overload]
        row["cumulative_cost_nanos"] = running[key]
    return rows


def tag_set(tags: Iterable[str]) -> str:
    """A call's tags as one rollup dimension: a JSON array, sorted and unique (so two
    calls with the same tags in another order share a rollup row)."""
    return json.dumps(sorted(set(tags)), separators=(",", ":"))


def months_before(at: datetime, months: int) -> datetime:
    """``at`` moved back ``months`` calendar months (the day clamped to the month's end),
    down to its 15-minute bucket: where a retention of ``months`` begins."""
    index = at.year * 12 + at.month - 1 - months
    year, month = divmod(index, 12)
    last = (date(year + (month + 1) // 12, (month + 1) % 12 + 1, 1) - timedelta(days=1)).day
    moved = at.replace(year=year, month=month + 1, day=min(at.day, last))
    return bucket_start(bucket_of(moved))
