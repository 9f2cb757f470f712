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
* ``usage(checks, now)`` reads what each bucket holds, changing nothing (for pages
  that show use against each limit).
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
from typing import Protocol

from spendgate.core.rate_checks import Check, CheckResult, Denial, Granted, Kind, validate

__all__ = ["Check", "CheckResult", "Denial", "Granted", "Kind", "RateLimiter", "validate"]


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

    async def usage(self, checks: Sequence[Check], now: float) -> list[int]:
        """What each check's bucket holds at ``now`` (window: the sum of the entries
        still in it; concurrency: the live slots), as ``acquire`` would count it; reads
        only (the console's headroom figures). Amounts in the checks are ignored."""

    async def reap(self, now: float) -> int:
        """Free the slots of reservations whose ``expires_at`` is before ``now``; how many."""

    async def aclose(self) -> None: ...
