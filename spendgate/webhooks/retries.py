"""When to try a failed delivery again, and when to give up on an endpoint (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta

#: waits after the 1st, 2nd, … failed attempt; after the last one the delivery fails
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
)
#: each wait is stretched or shrunk by up to this fraction, so retries do not stampede
JITTER = 0.1
#: an endpoint failing without a single success for this long is disabled
DISABLE_AFTER = timedelta(days=5)


def retry_delay(
    failed_attempts: int, rand: float, schedule: tuple[timedelta, ...] = RETRY_SCHEDULE
) -> timedelta | None:
    """The wait before the next attempt, or ``None`` when retries are used up.

    ``rand`` is a uniform draw in ``[0, 1)``; ``0.5`` means no jitter.
    """
    if failed_attempts < 1 or failed_attempts > len(schedule):
        return None
    base = schedule[failed_attempts - 1]
    return base * (1 + JITTER * (2 * rand - 1))


def should_disable(
    failing_since: datetime | None, now: datetime, after: timedelta = DISABLE_AFTER
) -> bool:
    return failing_since is not None and now - failing_since >= after
