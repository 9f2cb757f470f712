"""The rate limiter's vocabulary, shared by the rules and every backend: what a check
asks, what a grant and a denial say, and which checks a backend can represent (pure).

See ``spendgate.ratelimit`` for the windows' semantics and the backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from spendgate.core.value import Value

Kind = Literal["requests", "tokens", "concurrency", "spend"]


class Check(NamedTuple):
    """Admit ``amount`` more into ``bucket`` only if its usage stays within ``limit``.

    Window kinds count the entries of the last ``window_seconds``; ``concurrency``
    counts calls in flight (``amount`` must be 1, ``window_seconds`` is ignored).
    """

    bucket: str
    kind: Kind
    limit: int
    window_seconds: float
    amount: int


class CheckResult(Value, frozen=True):
    """A granted check, for the ``x-ratelimit-*`` headers: ``remaining`` after this
    request (never below 0) and ``reset_seconds`` until the oldest entry in the window
    leaves it (when ``remaining`` next grows); 0 for concurrency."""

    limit: int
    remaining: int
    reset_seconds: float


class Granted(Value, frozen=True):
    """Every check passed and was recorded; one result per check, in order."""

    results: tuple[CheckResult, ...]


@dataclass(frozen=True, slots=True)
class Denial:
    """The first check that did not fit; nothing was recorded.

    ``used``: the bucket's usage before this request. ``retry_after``: seconds until
    enough entries have left the window for this request to fit, or None when no wait
    is known: the amount alone exceeds the limit (it never fits), or a concurrency cap
    (a slot frees when some call in flight finishes).
    """

    index: int
    check: Check
    used: int
    retry_after: float | None

    @property
    def can_ever_fit(self) -> bool:
        return self.check.amount <= self.check.limit


def validate(reservation_id: str, checks: Sequence[Check]) -> None:
    """Refuse what the backends cannot represent; shared so both refuse alike. Every
    acquire runs it, so well-formed checks take a quick pass; anything else gets the
    thorough one, which names the first problem."""
    if reservation_id and reservation_id[0] != "#" and _well_formed(checks):
        return
    _validate(reservation_id, checks)


def _well_formed(checks: Sequence[Check]) -> bool:
    for _, kind, limit, window_seconds, amount in checks:
        if (
            limit < 0
            or amount < 0
            or (amount != 1 if kind == "concurrency" else window_seconds <= 0)
        ):
            return False
    return len(checks) < 2 or len({check[0] for check in checks}) == len(checks)


def _validate(reservation_id: str, checks: Sequence[Check]) -> None:
    if not reservation_id or reservation_id[0] == "#":
        raise ValueError(f"invalid reservation id {reservation_id!r}")
    buckets: set[str] = set()
    for bucket, kind, limit, window_seconds, amount in checks:
        if bucket in buckets:
            raise ValueError(f"bucket {bucket!r} is checked twice in one acquire")
        if limit < 0 or amount < 0:
            raise ValueError(f"bucket {bucket!r}: amount and limit must be >= 0")
        if kind == "concurrency" and amount != 1:
            raise ValueError(f"bucket {bucket!r}: a concurrency check takes one slot (amount=1)")
        if kind != "concurrency" and window_seconds <= 0:
            raise ValueError(f"bucket {bucket!r}: the window must be > 0 seconds")
        buckets.add(bucket)
