"""Rate-limit logs in one process's memory (``memory://``).

asyncio runs one coroutine at a time, and no method here awaits anything, so each
check-and-record is atomic with respect to every other caller on the loop. Not shared
between processes or replicas: use ``redis://`` for that.

Each window bucket is a deque of entries, oldest first, with a running total; entries
leave from the left as ``now`` passes them (on every check of the bucket). An entry is
stamped ``max(now, newest entry)`` so the deque stays sorted even if the clock steps
back. Concurrency buckets map reservation id to ``expires_at``; slots past it stop
counting, dropped when they would make the difference (a check stays O(1), not
O(calls in flight)). ``reap`` sweeps every bucket and drops the empty ones, so memory
is bounded by the requests of the last window plus the calls in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spendgate.ratelimit import Check, CheckResult, Denial, Granted, validate


@dataclass(slots=True, eq=False)
class _Entry:
    time: float
    amount: int
    live: bool = True


@dataclass(slots=True)
class _Window:
    window: float
    entries: deque[_Entry] = field(default_factory=deque)
    total: int = 0

    def prune(self, now: float) -> None:
        """Drop the entries that have left the window at ``now``."""
        cutoff = now - self.window
        entries = self.entries
        while entries and entries[0].time <= cutoff:
            gone = entries.popleft()
            gone.live = False
            self.total -= gone.amount

    def fit_time(self, need: int, cutoff: float) -> float | None:
        """Seconds after ``cutoff``'s moment at which ``need`` has left the window."""
        freed = 0
        for entry in self.entries:
            freed += entry.amount
            if freed >= need:
                return entry.time - cutoff
        return None


def _drop_expired(slots: dict[str, float], now: float) -> int:
    """Drop the slots whose ``expires_at`` is before ``now``; how many are left."""
    for rid in [rid for rid, expires_at in slots.items() if expires_at < now]:
        del slots[rid]
    return len(slots)


@dataclass(slots=True)
class _Held:
    expires_at: float
    entries: dict[str, _Entry] = field(default_factory=dict)
    slots: list[str] = field(default_factory=list)


class MemoryRateLimiter:
    """The ``RateLimiter`` protocol over three dicts: windows, slots, reservations."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._held: dict[str, _Held] = {}

    async def acquire(
        self, reservation_id: str, checks: Sequence[Check], now: float, expires_at: float
    ) -> Denial | Granted:
        """One pass: each check is recorded as soon as it passes, and a refusal takes back
        what this call recorded so far (nothing else runs in between)."""
        validate(reservation_id, checks)
        held = _Held(expires_at)
        results: list[CheckResult] = []
        index = 0
        for bucket, kind, limit, window_seconds, amount in checks:
            if kind == "concurrency":
                slots = self._slots.get(bucket)
                if slots is None:
                    slots = self._slots[bucket] = {}
                used = len(slots)
                if used >= limit:
                    used = _drop_expired(slots, now)
                    if used >= limit:
                        self._undo(reservation_id, held, bucket)
                        return Denial(index, checks[index], used, None)
                slots[reservation_id] = expires_at
                held.slots.append(bucket)
                results.append(CheckResult(limit, limit - used - 1, 0.0))
                index += 1
                continue
            window = self._windows.get(bucket)
            if window is None:
                window = self._windows[bucket] = _Window(window_seconds)
            else:
                window.window = window_seconds
                if window.entries and window.entries[0].time <= now - window_seconds:
                    window.prune(now)
            used = window.total
            entries = window.entries
            if used + amount > limit:
                retry = None
                if amount <= limit:
                    retry = window.fit_time(used + amount - limit, now - window_seconds)
                self._undo(reservation_id, held, bucket)
                return Denial(index, checks[index], used, retry)
            newest = entries[-1].time if entries else now
            entry = _Entry(newest if newest > now else now, amount)
            entries.append(entry)
            window.total = used + amount
            held.entries[bucket] = entry
            reset = entries[0].time - (now - window_seconds)
            results.append(CheckResult(limit, limit - used - amount, reset))
            index += 1
        self._held[reservation_id] = held
        return Granted(tuple(results))

    def _undo(self, reservation_id: str, held: _Held, refused: str) -> None:
        """Take back what a refused ``acquire`` recorded (each entry is the last of its
        deque) and drop the buckets it left empty, the ``refused`` one included."""
        for bucket, entry in held.entries.items():
            window = self._windows[bucket]
            window.entries.pop()
            window.total -= entry.amount
        self._free_slots(reservation_id, held.slots)
        for bucket in (*held.entries, refused):
            emptied = self._windows.get(bucket)
            if emptied is not None and not emptied.entries:
                del self._windows[bucket]
        if not self._slots.get(refused, True):
            del self._slots[refused]

    async def settle(self, reservation_id: str, actual: Mapping[str, int], now: float) -> None:
        held = self._held.pop(reservation_id, None)
        if held is None:
            return
        for bucket, amount in actual.items():
            entry = held.entries.get(bucket)
            if entry is not None and entry.live:
                self._windows[bucket].total += amount - entry.amount
                entry.amount = amount
        self._free_slots(reservation_id, held.slots)

    async def release(self, reservation_id: str, now: float) -> None:
        held = self._held.pop(reservation_id, None)
        if held is None:
            return
        for bucket, entry in held.entries.items():
            if entry.live:
                window = self._windows[bucket]
                if window.entries[-1] is entry:  # the usual case: a budget refused it just now
                    window.entries.pop()
                else:
                    window.entries.remove(entry)  # O(entries), by identity (eq=False)
                window.total -= entry.amount
                entry.live = False
                if not window.entries:
                    del self._windows[bucket]
        self._free_slots(reservation_id, held.slots)

    async def reap(self, now: float) -> int:
        """Also sweeps every bucket: entries that have left and expired slots are
        dropped, and so is every bucket left empty."""
        expired = [rid for rid, held in self._held.items() if held.expires_at < now]
        for rid in expired:
            self._free_slots(rid, self._held.pop(rid).slots)
        for bucket, window in list(self._windows.items()):
            window.prune(now)
            if not window.entries:
                del self._windows[bucket]
        for bucket, slots in list(self._slots.items()):
            if not _drop_expired(slots, now):
                del self._slots[bucket]
        return len(expired)

    async def aclose(self) -> None:
        return None

    def _free_slots(self, reservation_id: str, buckets: list[str]) -> None:
        for bucket in buckets:
            slots = self._slots.get(bucket)
            if slots is not None:
                slots.pop(reservation_id, None)
                if not slots:
                    del self._slots[bucket]

    def bucket_count(self) -> int:
        """Buckets currently held in memory (for tests of the memory bound)."""
        return len(self._windows) + len(self._slots)
