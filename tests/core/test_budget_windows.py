"""Budget period windows: calendar-aligned, DST-correct, tiling time without gaps."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spendgate.core.budget_windows import (
    WEEKDAYS,
    Period,
    Window,
    days_in_window,
    elapsed_fraction,
    next_window,
    previous_window,
    validate_timezone,
    validate_week_start,
    window_at,
    windows_between,
)

ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Apia",
    "UTC",
)
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")
LOW = datetime(1990, 1, 1, tzinfo=UTC)
HIGH = datetime(2060, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
H = timedelta(hours=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """An aware UTC datetime, briefly."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Local dates a zone skipped entirely (Samoa jumped over the international date line).
SKIPPED_DAYS = {("Pacific/Apia", date(2011, 12, 30))}


def with_hard_cases(test: Callable[..., None]) -> Callable[..., None]:
    """Pin the nastiest instants as explicit examples on top of the random ones."""
    hard = [
        ("Pacific/Apia", utc(2011, 12, 30, 10), "monthly", "friday"),
        ("Pacific/Apia", utc(2011, 12, 30, 9, 59), "weekly", "friday"),
        ("Pacific/Apia", utc(2011, 12, 30, 10), "weekly", "saturday"),
        ("Pacific/Apia", utc(2011, 12, 30, 10), "daily", "monday"),
        ("America/Santiago", utc(2026, 9, 6, 4), "daily", "sunday"),
        ("America/Santiago", utc(2026, 9, 6, 3, 59), "weekly", "sunday"),
        ("America/Havana", utc(2026, 11, 1, 5, 30), "daily", "sunday"),
        ("America/Havana", utc(2026, 3, 8, 5), "monthly", "sunday"),
        ("Australia/Lord_Howe", utc(2026, 10, 3, 13, 30), "daily", "monday"),
        ("Asia/Kolkata", utc(2028, 2, 29, 18, 29, 59), "monthly", "monday"),
    ]
    for tz, at, period, week_start in hard:
        test = example((tz, at), period, week_start)(test)
    return test


def occurring(first: date, count: int, tz: str) -> list[date]:
    """The ``count`` calendar days from ``first`` minus those the zone skipped."""
    days = (first + timedelta(days=n) for n in range(count))
    return [day for day in days if (tz, day) not in SKIPPED_DAYS]


@cache
def transitions(tz: str) -> tuple[datetime, ...]:
    """Every UTC-offset change of ``tz`` between LOW and HIGH, found by scanning (test-side)."""
    zone = ZoneInfo(tz)
    found: list[datetime] = []
    day = LOW
    offset = day.astimezone(zone).utcoffset()
    while day < HIGH:
        following = day + timedelta(days=1)
        following_offset = following.astimezone(zone).utcoffset()
        if following_offset != offset:
            low, high = day, following
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        day, offset = following, following_offset
    return tuple(found)


@st.composite
def zone_and_instant(draw: Callable[..., object]) -> tuple[str, datetime]:
    """A zone and an instant: uniform, near a local midnight, or near a DST transition."""
    tz = draw(st.sampled_from(ZONES))
    assert isinstance(tz, str)
    zone = ZoneInfo(tz)
    kind = draw(st.sampled_from(("uniform", "midnight", "transition")))
    if kind == "uniform":
        micros = draw(st.integers(0, (HIGH - LOW) // US - 1))
        assert isinstance(micros, int)
        return tz, LOW + micros * US
    if kind == "transition" and transitions(tz):
        anchor = draw(st.sampled_from(transitions(tz)))
        seconds = draw(st.integers(-36 * 3600, 36 * 3600))
        assert isinstance(anchor, datetime) and isinstance(seconds, int)
        return tz, anchor + timedelta(seconds=seconds)
    day = draw(st.dates(date(1990, 1, 2), date(2059, 12, 30)))
    first_of_month = draw(st.booleans())
    minutes = draw(st.integers(-180, 180))
    fold = draw(st.integers(0, 1))
    assert isinstance(day, date) and isinstance(minutes, int) and isinstance(fold, int)
    wall = datetime.combine(day.replace(day=1) if first_of_month else day, time())
    wall += timedelta(minutes=minutes)
    return tz, wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)


periods = st.sampled_from(PERIODS)
week_starts = st.sampled_from(WEEKDAYS)


def midnight_exists(day: date, zone: ZoneInfo) -> bool:
    """Whether wall time ``day 00:00`` occurs in ``zone`` (checked by UTC round trip)."""
    wall = datetime.combine(day, time())
    return any(
        wall.replace(tzinfo=zone, fold=fold).astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        == wall
        for fold in (0, 1)
    )


@PROPERTY
@given(zone_and_instant(), periods, week_starts)
@with_hard_cases
def test_window_contains_the_instant(
    case: tuple[str, datetime], period: Period, week_start: str
) -> None:
    """(a) The window returned for an instant contains that instant."""
    tz, at = case
    w = window_at(at, period, tz, week_start)
    assert w.contains(at)
    assert w.start <= at < w.end
    assert w.start.utcoffset() == timedelta(0) and w.end.utcoffset() == timedelta(0)


@PROPERTY
@given(zone_and_instant(), periods, week_starts)
@with_hard_cases
def test_windows_tile_time(case: tuple[str, datetime], period: Period, week_start: str) -> None:
    """(b) Next starts where this ends, previous ends where this starts; keys strictly rise."""
    tz, at = case
    w = window_at(at, period, tz, week_start)
    after = next_window(w, period, tz, week_start)
    before = previous_window(w, period, tz, week_start)
    assert after.start == w.end
    assert before.end == w.start
    assert previous_window(after, period, tz, week_start) == w
    assert next_window(before, period, tz, week_start) == w
    assert before.key < w.key < after.key


@PROPERTY
@given(zone_and_instant(), periods, week_starts)
@with_hard_cases
def test_window_starts_at_local_midnight(
    case: tuple[str, datetime], period: Period, week_start: str
) -> None:
    """(c) Start is local midnight, or the first instant of that date if midnight is skipped."""
    tz, at = case
    zone = ZoneInfo(tz)
    w = window_at(at, period, tz, week_start)
    local_day = w.local_start.date()
    just_before = (w.start - US).astimezone(zone).replace(tzinfo=None)
    assert just_before < datetime.combine(local_day, time())
    assert w.local_start.tzinfo is zone and w.local_end.tzinfo is zone
    assert w.local_start == w.start.astimezone(zone)
    if midnight_exists(local_day, zone):
        assert w.local_start.time() == time(0, 0)
        assert w.local_start.fold == 0
    else:
        assert w.local_start.time() > time(0, 0)


def skipped_to(w: Window, nominal: date, zone: ZoneInfo) -> bool:
    """Whether the local date ``nominal`` never occurred and ``w`` starts just after it."""
    before = (w.start - US).astimezone(zone).date()
    return before < nominal < w.local_start.date()


@PROPERTY
@given(zone_and_instant(), periods, week_starts)
@with_hard_cases
def test_window_shape_per_period(
    case: tuple[str, datetime], period: Period, week_start: str
) -> None:
    """(d) Days last 23-25 h (Lord Howe 23.5-24.5 h); months start on the 1st; weeks on the day."""
    tz, at = case
    zone = ZoneInfo(tz)
    w = window_at(at, period, tz, week_start)
    length = w.end - w.start
    first = w.local_start.date()
    if period == "daily":
        low, high = {"Australia/Lord_Howe": (23.5, 24.5), "UTC": (24, 24)}.get(tz, (23, 25))
        assert low * H <= length <= high * H
        assert (tz, first) not in SKIPPED_DAYS
        assert days_in_window(w, tz) == [first]
        assert w.key == first.isoformat()
        return
    if period == "monthly":
        assert first.day == 1
        nominal = first
        days = occurring(first, calendar.monthrange(first.year, first.month)[1], tz)
        assert w.key == f"{first:%Y-%m}"
    else:
        wanted = WEEKDAYS.index(week_start)
        nominal = first - timedelta(days=(first.weekday() - wanted) % 7)
        assert nominal == first or skipped_to(w, nominal, zone)
        days = occurring(nominal, 7, tz)
        assert w.key == f"{nominal.isoformat()}/P1W"
    assert days[0] == first
    assert days_in_window(w, tz) == days
    assert abs(length - timedelta(days=len(days))) <= H


@PROPERTY
@given(zone_and_instant(), periods, week_starts)
@with_hard_cases
def test_window_is_stable_at_its_edges(
    case: tuple[str, datetime], period: Period, week_start: str
) -> None:
    """(e) The first and the last microsecond of a window map back to the same window."""
    tz, at = case
    w = window_at(at, period, tz, week_start)
    assert window_at(w.start, period, tz, week_start) == w
    assert window_at(w.end - US, period, tz, week_start) == w
    assert window_at(w.end, period, tz, week_start) != w


@PROPERTY
@given(zone_and_instant(), st.integers(0, 90 * 24 * 3600), periods, week_starts)
def test_windows_between_cover_the_span(
    case: tuple[str, datetime], seconds: int, period: Period, week_start: str
) -> None:
    """windows_between yields consecutive windows covering exactly the span's windows."""
    tz, start = case
    end = start + timedelta(seconds=seconds)
    got = list(windows_between(start, end, period, tz, week_start))
    if seconds == 0:
        assert got == []
        return
    assert got[0] == window_at(start, period, tz, week_start)
    assert got[-1] == window_at(end - US, period, tz, week_start)
    assert all(a.end == b.start for a, b in pairwise(got))


DAILY_TABLE = [
    # zone, instant inside the day, expected UTC start, expected UTC end, hours
    ("America/New_York", utc(2026, 3, 8, 12), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
    ("America/New_York", utc(2026, 11, 1, 12), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
    ("Europe/Berlin", utc(2026, 3, 29, 12), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23),
    ("Europe/Berlin", utc(2026, 10, 25, 12), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),
    ("Australia/Lord_Howe", utc(2026, 4, 5), utc(2026, 4, 4, 13), utc(2026, 4, 5, 13, 30), 24.5),
    ("Australia/Lord_Howe", utc(2026, 10, 4), utc(2026, 10, 3, 13, 30), utc(2026, 10, 4, 13), 23.5),
    ("Asia/Kolkata", utc(2026, 3, 8, 20), utc(2026, 3, 8, 18, 30), utc(2026, 3, 9, 18, 30), 24),
    # Santiago springs forward at local midnight: the day starts at 01:00 local.
    ("America/Santiago", utc(2026, 9, 6, 12), utc(2026, 9, 6, 4), utc(2026, 9, 7, 3), 23),
    ("America/Santiago", utc(2026, 4, 5, 12), utc(2026, 4, 5, 4), utc(2026, 4, 6, 4), 24),
    # Havana: midnight skipped in March, midnight repeated in November (first one wins).
    ("America/Havana", utc(2026, 3, 8, 12), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
    ("America/Havana", utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
    ("America/Havana", utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
    # Beirut springs forward at midnight: 2026-03-29 begins at 01:00 (+03).
    ("Asia/Beirut", utc(2026, 3, 29, 12), utc(2026, 3, 28, 22), utc(2026, 3, 29, 21), 23),
]


@pytest.mark.parametrize(("tz", "at", "start", "end", "hours"), DAILY_TABLE)
def test_daily_window_table(
    tz: str, at: datetime, start: datetime, end: datetime, hours: float
) -> None:
    """Daily windows on DST days, half-hour shifts and half-hour offsets have exact bounds."""
    w = window_at(at, "daily", tz)
    assert (w.start, w.end) == (start, end)
    assert w.end - w.start == hours * H


def test_kolkata_leap_february() -> None:
    """Kolkata's February 2028 runs 2028-01-31T18:30Z to 2028-02-29T18:30Z (29 days)."""
    w = window_at(utc(2028, 2, 15), "monthly", "Asia/Kolkata")
    assert (w.start, w.end) == (utc(2028, 1, 31, 18, 30), utc(2028, 2, 29, 18, 30))
    assert w.key == "2028-02"
    assert len(days_in_window(w, "Asia/Kolkata")) == 29


@pytest.mark.parametrize("tz", ["America/New_York", "Europe/Berlin", "Asia/Kolkata"])
def test_monthly_boundary_at_local_midnight(tz: str) -> None:
    """2026-01-31 23:59:59 local is January; 2026-02-01 00:00 local opens February."""
    zone = ZoneInfo(tz)
    last_second = datetime(2026, 1, 31, 23, 59, 59, tzinfo=zone)
    first_instant = datetime(2026, 2, 1, tzinfo=zone)
    january = window_at(last_second, "monthly", tz)
    february = window_at(first_instant, "monthly", tz)
    assert (january.key, february.key) == ("2026-01", "2026-02")
    assert january.end == february.start == first_instant
    assert january.local_start == datetime(2026, 1, 1, tzinfo=zone)


def test_weekly_with_sunday_start() -> None:
    """A Sunday-first week in New York spans the spring-forward (7 days less an hour)."""
    wednesday = utc(2026, 3, 11, 15)
    sunday_week = window_at(wednesday, "weekly", "America/New_York", "sunday")
    assert (sunday_week.start, sunday_week.end) == (utc(2026, 3, 8, 5), utc(2026, 3, 15, 4))
    assert sunday_week.key == "2026-03-08/P1W"
    monday_week = window_at(wednesday, "weekly", "America/New_York", "monday")
    assert (monday_week.start, monday_week.end) == (utc(2026, 3, 9, 4), utc(2026, 3, 16, 4))
    assert monday_week.key == "2026-03-09/P1W"


def test_apia_skipped_day() -> None:
    """Samoa skipped 2011-12-30: no window is that day, and a Friday week starts on the 31st."""
    tz = "Pacific/Apia"
    thursday = window_at(utc(2011, 12, 29, 12), "daily", tz)
    saturday = next_window(thursday, "daily", tz, "monday")
    assert thursday.local_start.date() == date(2011, 12, 29)
    assert saturday.local_start.date() == date(2011, 12, 31)
    assert thursday.end == saturday.start == utc(2011, 12, 30, 10)
    friday_week = window_at(utc(2012, 1, 1), "weekly", tz, "friday")
    assert friday_week.start == utc(2011, 12, 30, 10)
    assert friday_week.end - friday_week.start == timedelta(days=6)
    week = window_at(utc(2011, 12, 28), "weekly", tz, "monday")
    assert date(2011, 12, 30) not in days_in_window(week, tz)
    assert len(days_in_window(week, tz)) == 6


def test_windows_between_table() -> None:
    """Mid-January to 1 April (local) in New York is January, February and March."""
    zone = ZoneInfo("America/New_York")
    start, end = datetime(2026, 1, 15, tzinfo=zone), datetime(2026, 4, 1, tzinfo=zone)
    got = list(windows_between(start, end, "monthly", "America/New_York"))
    assert [w.key for w in got] == ["2026-01", "2026-02", "2026-03"]
    assert list(windows_between(end, start, "monthly", "America/New_York")) == []


def test_elapsed_fraction() -> None:
    """Elapsed fraction is 0 at or before start, 1 at or after end, linear in between."""
    w = window_at(utc(2026, 3, 10), "daily", "UTC")
    assert elapsed_fraction(w, w.start - H) == 0.0
    assert elapsed_fraction(w, w.start) == 0.0
    assert elapsed_fraction(w, w.start + 6 * H) == 0.25
    assert elapsed_fraction(w, w.end) == 1.0
    assert elapsed_fraction(w, w.end + H) == 1.0


def test_naive_datetimes_are_refused() -> None:
    """Naive instants are ambiguous, so every entry point refuses them."""
    naive = datetime(2026, 3, 10)
    w = window_at(utc(2026, 3, 10), "daily", "UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        window_at(naive, "daily", "UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        w.contains(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        elapsed_fraction(w, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        list(windows_between(naive, utc(2026, 4, 1), "daily", "UTC"))


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "America", "", "/etc/passwd", "../UTC"])
def test_validate_timezone_refuses_unknown_zones(tz: str) -> None:
    """Unknown names, directories and paths are refused with a clear ValueError."""
    with pytest.raises(ValueError, match="unknown time zone"):
        validate_timezone(tz)
    with pytest.raises(ValueError, match="unknown time zone"):
        window_at(utc(2026, 1, 1), "daily", tz)


@pytest.mark.parametrize(
    "tz", ["localtime", "posixrules", "Factory", "right/UTC", "posix/Europe/Berlin"]
)
def test_validate_timezone_refuses_the_zone_directorys_other_files(tz: str) -> None:
    """Names the system's zone directory holds besides IANA zones (issue 24, item 3:
    ``localtime`` is the server's own zone, whatever that is) are refused as input."""
    with pytest.raises(ValueError, match="unknown time zone"):
        validate_timezone(tz)


def test_validate_timezone_accepts_iana_names() -> None:
    """Known IANA names come back unchanged."""
    assert [validate_timezone(tz) for tz in ZONES] == list(ZONES)


def test_validate_week_start() -> None:
    """Weekday names are normalised to lower case; anything else is refused."""
    assert validate_week_start("Sunday") == "sunday"
    assert validate_week_start(" monday ") == "monday"
    with pytest.raises(ValueError, match="unknown week start"):
        validate_week_start("funday")
    with pytest.raises(ValueError, match="unknown week start"):
        window_at(utc(2026, 1, 1), "weekly", "UTC", "mon")


def test_unknown_period_is_refused() -> None:
    """Only daily, weekly and monthly periods exist."""
    with pytest.raises(ValueError, match="unknown period"):
        window_at(utc(2026, 1, 1), "yearly", "UTC")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("zone", "key", "span"),
    [
        ("UTC", "2026-03-10", "20260310T000000Z/20260311T000000Z"),
        # the same date, other hours
        ("America/Los_Angeles", "2026-03-10", "20260310T070000Z/20260311T070000Z"),
        # the same hours, another date: a day apart
        ("Pacific/Honolulu", "2026-03-10", "20260310T100000Z/20260311T100000Z"),
        ("Pacific/Kiritimati", "2026-03-11", "20260310T100000Z/20260311T100000Z"),
    ],
)
def test_a_window_is_named_by_its_utc_bounds_where_its_key_is_a_local_date(
    zone: str, key: str, span: str
) -> None:
    """``span`` names the window itself: it differs where the hours do and not where
    only the local date does (a threshold fires once per span)."""
    window = window_at(datetime(2026, 3, 10, 15, 30, tzinfo=UTC), "daily", zone)
    assert (window.key, window.span) == (key, span)
