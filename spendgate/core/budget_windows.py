"""Budget period windows: the one place that decides when a budget period starts and ends.

A period is calendar-aligned in an IANA time zone and begins at local midnight:

    daily    that local date
    weekly   the most recent local date falling on the chosen first weekday
    monthly  the 1st of the local month

A window is the half-open UTC interval ``[start, end)`` between the starts of two
consecutive periods, so windows tile time with no gap and no overlap. The start of a
local date ``d`` is the first instant whose local wall time is at or after ``d 00:00``:

- midnight exists once              -> that instant;
- midnight is ambiguous (fall-back) -> its first (earlier, ``fold=0``) occurrence;
- midnight falls in a DST gap       -> the first instant after the gap (e.g. 01:00 in
  America/Santiago on its spring-forward Sunday);
- the whole date was skipped (Pacific/Apia, 2011-12-30) -> same instant as the next
  date's start, so that date's window is empty and never returned.

A zone is named by its IANA name and nothing else: the list is the ``tzdata`` package's
(the IANA database as data), less ``Factory``. Names the system's zone directory holds
besides (``localtime``, ``posixrules``, ``right/…``, ``posix/…``) are refused: they mean
a different zone on every machine, or none.

Pure: no I/O beyond reading the zone data, no wall clock (``at`` is always passed in).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from importlib import resources
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = get_args(Period)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_ONE_US = timedelta(microseconds=1)
_ONE_S = timedelta(seconds=1)
#: ISO 8601 basic format in UTC: a window's bounds in its ``span``
_SPAN = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True, slots=True)
class Window:
    """One budget period: ``[start, end)`` in UTC, with the same bounds in local time.

    ``key`` names the period stably (a DB key): ``"2026-03-14"`` daily,
    ``"2026-03-09/P1W"`` weekly (ISO 8601 interval from the local start date),
    ``"2026-03"`` monthly.
    """

    start: datetime
    end: datetime
    local_start: datetime
    local_end: datetime
    key: str

    @property
    def span(self) -> str:
        """The window itself, named by its UTC bounds as an ISO 8601 interval
        (``"20260310T070000Z/20260311T070000Z"``): where ``key`` names a local date, which
        a budget moved to another zone keeps for other hours (March 10 in UTC and in Los
        Angeles) or changes for the same ones (Honolulu's March 10 is Kiritimati's 11th)."""
        return f"{self.start.astimezone(UTC):{_SPAN}}/{self.end.astimezone(UTC):{_SPAN}}"

    def contains(self, t: datetime) -> bool:
        """Whether the aware instant ``t`` lies in ``[start, end)``."""
        _require_aware(t)
        return self.start <= t < self.end


@cache
def iana_zones() -> frozenset[str]:
    """Every IANA time zone name (``tzdata``'s list), less ``Factory`` (no place)."""
    names = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8").split()
    return frozenset(names) - {"Factory"}


def validate_timezone(tz: str) -> str:
    """Return ``tz`` if it is an IANA zone name; raise ``ValueError`` otherwise."""
    if not isinstance(tz, str) or tz not in iana_zones():
        raise ValueError(
            f"unknown time zone {tz!r}; expected an IANA name such as Europe/Berlin or UTC"
        )
    _zone(tz)
    return tz


def validate_week_start(s: str) -> str:
    """Return the weekday name, lower-cased; raise ``ValueError`` if it is not one."""
    name = s.strip().lower() if isinstance(s, str) else ""
    if name not in WEEKDAYS:
        raise ValueError(f"unknown week start {s!r}; expected one of {', '.join(WEEKDAYS)}")
    return name


def window_at(at: datetime, period: Period, tz: str, week_start: str = "monday") -> Window:
    """The calendar-aligned window of ``period`` in zone ``tz`` that contains instant ``at``."""
    _require_aware(at)
    zone = _zone(tz)
    first_weekday = WEEKDAYS.index(validate_week_start(week_start))
    _check_period(period)
    first = _period_start(at.astimezone(zone).date(), period, first_weekday)
    window = _window_from(first, period, zone)
    # A local date can recur after a fall-back that crosses midnight; the instant then
    # belongs to the window that already began. Boundaries strictly increase, so this ends.
    while at < window.start:
        first = _period_start(first - timedelta(days=1), period, first_weekday)
        window = _window_from(first, period, zone)
    while at >= window.end:
        first = _next_period_start(first, period)
        window = _window_from(first, period, zone)
    return window


def next_window(w: Window, period: Period, tz: str, week_start: str = "monday") -> Window:
    """The window that starts where ``w`` ends."""
    return window_at(w.end, period, tz, week_start)


def previous_window(w: Window, period: Period, tz: str, week_start: str = "monday") -> Window:
    """The window that ends where ``w`` starts."""
    return window_at(w.start - _ONE_US, period, tz, week_start)


def windows_between(
    start: datetime, end: datetime, period: Period, tz: str, week_start: str = "monday"
) -> Iterator[Window]:
    """The windows that overlap ``[start, end)``, in order; none if ``end <= start``."""
    _require_aware(start)
    _require_aware(end)
    if end <= start:
        return
    window = window_at(start, period, tz, week_start)
    while window.start < end:
        yield window
        window = next_window(window, period, tz, week_start)


def days_in_window(w: Window, tz: str) -> list[date]:
    """The local dates that occur inside ``w`` (a date skipped by the zone is left out)."""
    zone = _zone(tz)
    last = (w.end - _ONE_US).astimezone(zone).date()
    day = w.local_start.date()
    days: list[date] = []
    begins = _day_start(day, zone)
    while day <= last:
        following = day + timedelta(days=1)
        begins_next = _day_start(following, zone)
        if begins < begins_next:
            days.append(day)
        day, begins = following, begins_next
    return days


def elapsed_fraction(w: Window, at: datetime) -> float:
    """How much of ``w`` has passed at ``at``, clamped to ``0.0 .. 1.0``."""
    _require_aware(at)
    if at <= w.start:
        return 0.0
    if at >= w.end:
        return 1.0
    return (at - w.start) / (w.end - w.start)


def _require_aware(t: datetime) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {t.isoformat()}")


def _check_period(period: str) -> None:
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; expected one of {', '.join(PERIODS)}")


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"unknown time zone {tz!r}; expected an IANA name such as Europe/Berlin")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}; expected an IANA name such as Europe/Berlin"
        ) from exc


def _period_start(local: date, period: Period, first_weekday: int) -> date:
    if period == "daily":
        return local
    if period == "weekly":
        return local - timedelta(days=(local.weekday() - first_weekday) % 7)
    return local.replace(day=1)


def _next_period_start(first: date, period: Period) -> date:
    if period == "daily":
        return first + timedelta(days=1)
    if period == "weekly":
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _key(first: date, period: Period) -> str:
    if period == "monthly":
        return f"{first.year:04d}-{first.month:02d}"
    if period == "weekly":
        return f"{first.isoformat()}/P1W"
    return first.isoformat()


def _window_from(first: date, period: Period, zone: ZoneInfo) -> Window:
    start = _day_start(first, zone)
    end = _day_start(_next_period_start(first, period), zone)
    return Window(
        start=start,
        end=end,
        local_start=start.astimezone(zone),
        local_end=end.astimezone(zone),
        key=_key(first, period),
    )


def _wall(t: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall time of the UTC instant ``t``."""
    return t.astimezone(zone).replace(tzinfo=None)


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first UTC instant whose local wall time in ``zone`` is at or after ``day`` 00:00."""
    midnight = datetime.combine(day, time())
    earlier = midnight.replace(tzinfo=zone, fold=0).astimezone(UTC)
    later = midnight.replace(tzinfo=zone, fold=1).astimezone(UTC)
    for candidate in sorted((earlier, later)):
        if _wall(candidate, zone) == midnight:
            return candidate
    # Midnight is in a gap: the transition lies in (low, high]. Binary-search it to
    # the second (tzdata transitions fall on whole seconds).
    low, high = min(earlier, later), max(earlier, later)
    while high - low > _ONE_S:
        middle = low + ((high - low) // _ONE_S // 2) * _ONE_S
        if _wall(middle, zone) >= midnight:
            high = middle
        else:
            low = middle
    return high
