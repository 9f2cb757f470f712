"""Rate-limit logs shared by the enforcement path: exact sliding windows per bucket.

A *bucket* is one limit's counter for one kind (``<limit id>:requests``,
``:tokens``, ``:spend``, ``:concurrency``; see ``rules.checks_for``). A window
bucket (requests, tokens, spend) keeps a log of ``(time, amount)`` entries, one per
admitted request, and the usage at ``now`` is the sum of the entries with
``time > now - window``. Unlike a fixed window (or GCRA with a full burst) the log
never admits twice the limit across a window edge, and a refusal knows exactly when
enough capacity frees up: when the oldest entries that must leave have left. A
concurrency bucket holds one slot per call in flight, until it settles, is released,
or its ``expires_at`` passes.

``acquire`` is the one atomic step: every check or none. The life of a reservation:

* ``settle(id, actual, now)`` after a call that was forwarded upstream (whether it
  succeeded or not): its request entries stay counted, its tokens/spend entries are
  corrected from the estimate to ``actual`` (entries keep their start time, so a
  correction for an entry that has already left its window changes nothing), and its
  concurrency slots are freed.
* ``release(id, now)`` for a call that never reached the upstream (refused later by a
  budget, a bad request): every entry it made is removed, as if it never came.
* ``reap(now)`` frees the concurrency slots of reservations past ``expires_at`` (a
  crashed worker); their window entries age out on their own.

Time is passed in as epoch seconds; nothing here reads a clock. (``settle`` and
``release`` take ``now`` too, for symmetry and for backends that prune there; neither
current backend needs it: an entry's fate depends only on its own stamp.) Reservation ids must be
unique, non-empty and must not start with ``#``. Backends are chosen by URL:
``memory://`` (one process) or ``redis://…`` (one Lua script per call, shared by every
replica).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

Kind = Literal["requests", "tokens", "concurrency", "spend"]


class Check(NamedTuple):
    """Admit ``amount`` more into ``bucket`` only if its usage stays within ``limit``.

    Window kinds count the entries of the last ``window_seconds``; ``concurrency``
    counts calls in flight (``amount`` must be 1, ``window_seconds`` is ignored).
    A named tuple, not a frozen dataclass: every call makes several, and a frozen
    dataclass's ``__init__`` costs about twice as much (``object.__setattr__`` per field).
    """

    bucket: str
    kind: Kind
    limit: int
    window_seconds: float
    amount: int


class CheckResult(NamedTuple):
    """A granted check, for the ``x-ratelimit-*`` headers: ``remaining`` after this
    request (never below 0) and ``reset_seconds`` until the oldest entry in the window
    leaves it (when ``remaining`` next grows); 0 for concurrency."""

    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class Granted:
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
        if limit < 0 or amount < 0 or (
                amount != 1 if kind == "concurrency" else window_seconds <= 0):
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


class RateLimiter(Protocol):
    async def acquire(
        self, reservation_id: str, checks: Sequence[Check], now: float, expires_at: float
    ) -> Denial | Granted:
        """All checks or none, atomically; window entries are stamped ``now`` and the
        reservation is remembered until settled, released or reaped after ``expires_at``."""

    async def settle(self, reservation_id: str, actual: Mapping[str, int], now: float) -> None:
        """Correct tokens/spend entries to ``actual`` (by bucket), keep request entries,
        free concurrency slots, forget the reservation. Idempotent for slots."""

    async def release(self, reservation_id: str, now: float) -> None:
        """Remove every entry and slot of a call that was never forwarded (idempotent)."""

    async def reap(self, now: float) -> int:
        """Free the slots of reservations whose ``expires_at`` is before ``now``; how many."""

    async def aclose(self) -> None: ...
