"""``core.showback.offset_segments``: the runs of one UTC offset over a range of buckets,
what every report, the daily rollup and the forecasts' reads turn into a ``CASE``. Each
bucket of the range has its zone's own offset in its segment, whatever the range's
length and wherever a transition falls in it (its last partial day too)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from spendgate.core import showback as sb

#: DST (Lord Howe by half an hour), a zone without, and Samoa, which skipped a day
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia"]
#: Berlin's change to summer time, 2026-03-29 01:00 UTC
BERLIN_SPRING = sb.bucket_of(datetime(2026, 3, 29, 1, tzinfo=UTC))
LOW = sb.bucket_of(datetime(2011, 12, 20, tzinfo=UTC))  # Samoa's skipped 30 December 2011
HIGH = sb.bucket_of(datetime(2026, 12, 31, tzinfo=UTC))


def _offset(bucket: int, tz: str) -> int:
    offset = sb.bucket_start(bucket).astimezone(ZoneInfo(tz)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds()) // sb.BUCKET_SECONDS


@settings(max_examples=300, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    first=st.integers(LOW, HIGH),
    length=st.one_of(st.integers(1, 2 * sb.BUCKETS_PER_DAY), st.integers(1, 400 * 96)),
)
# a range shorter than a day over Berlin's change; one ending a few hours after it
@example(tz="Europe/Berlin", first=BERLIN_SPRING - 1, length=90)
@example(tz="Europe/Berlin", first=BERLIN_SPRING - 9 * 96 - 5, length=9 * 96 + 40)
def test_every_bucket_of_the_range_has_its_zones_offset(tz: str, first: int, length: int) -> None:
    end = first + length
    segments = sb.offset_segments(first, end, tz)
    assert segments[0].first == first and segments[-1].end == end
    assert all(a.end == b.first and a.offset != b.offset for a, b in pairwise(segments))
    # every bucket where the offset may change (each segment's ends) and a sample between
    for s in segments:
        for bucket in {s.first, s.end - 1, (s.first + s.end) // 2}:
            assert _offset(bucket, tz) == s.offset, (bucket, s)
    # and no change is missed inside a segment: the offset a day apart and at the end
    for s in segments:
        for bucket in range(s.first, s.end, sb.BUCKETS_PER_DAY // 4):
            assert _offset(bucket, tz) == s.offset, (bucket, s)
