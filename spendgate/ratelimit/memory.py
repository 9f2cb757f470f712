"""Rate-limit logs in one process's memory (``memory://``).

asyncio runs one coroutine at a time, and no method here awaits anything, so each
check-and-record is atomic with respect to every other caller on the loop. Not shared
between processes or replicas: use ``redis://`` for that.

Each window bucket keeps its entries, oldest first, in two flat arrays (times as C
doubles, amounts as 64-bit ints) with a running total; entries leave from the front as
``now`` passes them (on every check of the bucket). Flat arrays because a busy key keeps
one entry per call per window alive for a minute: as Python objects, hundreds of
thousands of them made every full garbage collection walk them all (tens of ms of pause,
+40 % CPU per call at 4,000 calls/s); as array items the collector never sees them. An
entry is stamped ``max(now, newest entry)`` so the arrays stay sorted even if the clock
steps back. Concurrency buckets map reservation id to ``expires_at``; slots past it stop
counting, dropped when they would make the difference (a check stays O(1), not
O(calls in flight)). ``reap`` sweeps every bucket and drops the empty ones, so memory
is bounded by the requests of the last window plus the calls in flight.

The hot path's steps also come as plain methods (``acquire_now``, ``settle_now``,
``release_now``) that ``RateGate`` calls directly when this is its limiter: the
``RateLimiter`` coroutines only wrap them.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spendgate.ratelimit import Check, CheckResult, Denial, Granted, validate

#: entries that have left are cut off the front of the arrays once this many have piled up
_COMPACT_AT = 4096


@dataclass(slots=True, eq=False)
class _Window:
    """A sliding-window log. Entry ``seq`` (counted from this window's creation) sits at
    ``seq - first`` in the arrays; those before ``head`` have left the window."""

    window: float
    times: array[float] = field(default_factory=lambda: array("d"))
    amounts: array[int] = field(default_factory=lambda: array("q"))
    head: int = 0
    first: int = 0
    total: int = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def oldest(self) -> float:
        return self.times[self.head]

    def prune(self, now: float) -> None:
        """Drop the entries that have left the window at ``now``."""
        cutoff = now - self.window
        times, amounts, head, end = self.times, self.amounts, self.head, len(self.times)
        total = self.total
        while head < end and times[head] <= cutoff:
            total -= amounts[head]
            head += 1
        self.total, self.head = total, head
        if head >= _COMPACT_AT and head * 2 >= end:
            del times[:head]
            del amounts[:head]
            self.first += head
            self.head = 0

    def skip_empty(self) -> None:
        """Let released (zeroed) entries at the front leave, so the oldest entry, which
        tells when capacity returns, is one that counts."""
        amounts, head, end = self.amounts, self.head, len(self.times)
        while head < end and amounts[head] == 0:
            head += 1
        self.head = head

    def add(self, time: float, amount: int) -> int:
        """Append an entry; its ``seq``."""
        self.times.append(time)
        self.amounts.append(amount)
        self.total += amount
        return self.first + len(self.times) - 1

    def position(self, seq: int) -> int | None:
        """Where entry ``seq`` is, or None once it has left the window."""
        at = seq - self.first
        return at if self.head <= at < len(self.times) else None

    def fit_time(self, need: int, cutoff: float) -> float | None:
        """Seconds after ``cutoff``'s moment at which ``need`` has left the window."""
        freed = 0
        times, amounts = self.times, self.amounts
        for at in range(self.head, len(times)):
            freed += amounts[at]
            if freed >= need:
                return times[at] - cutoff
        return None


def _drop_expired(slots: dict[str, float], now: float) -> int:
    """Drop the slots whose ``expires_at`` is before ``now``; how many are left."""
    for rid in [rid for rid, expires_at in slots.items() if expires_at < now]:
        del slots[rid]
    return len(slots)


@dataclass(slots=True)
class _Held:
    expires_at: float
    #: bucket -> (its window when the entry was made, the entry's seq)
    entries: dict[str, tuple[_Window, int]] = field(default_factory=dict)
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
        validate(reservation_id, checks)
        return self.acquire_now(reservation_id, checks, now, expires_at)

    def acquire_now(
        self, reservation_id: str, checks: Sequence[Check], now: float, expires_at: float
    ) -> Denial | Granted:
        """One pass: each check is recorded as soon as it passes, and a refusal takes back
        what this call recorded so far (nothing else runs in between). The checks must be
        valid (``validate``): ``acquire`` checks them; ``RateGate`` makes them from a
        ``CheckTemplate`` of stored limits and the call's non-negative amounts."""
        held = _Held(expires_at, {}, [])  # not the default factories: every call
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
            cutoff = now - window_seconds
            if window is None:
                window = self._windows[bucket] = _Window(window_seconds)
            else:
                window.window = window_seconds
                # ``len(window)`` and ``oldest()`` inlined, here and below: every call
                if window.head < len(window.times) and window.times[window.head] <= cutoff:
                    window.prune(now)
            used = window.total
            if used + amount > limit:
                retry = None
                if amount <= limit:
                    retry = window.fit_time(used + amount - limit, cutoff)
                self._undo(reservation_id, held, bucket)
                return Denial(index, checks[index], used, retry)
            times = window.times
            stamp = times[-1] if window.head < len(times) and times[-1] > now else now
            times.append(stamp)  # ``window.add``, inlined
            window.amounts.append(amount)
            window.total += amount
            held.entries[bucket] = (window, window.first + len(times) - 1)
            reset = times[window.head] - cutoff
            results.append(CheckResult(limit, limit - used - amount, reset))
            index += 1
        self._held[reservation_id] = held
        return Granted(tuple(results))

    async def usage(self, checks: Sequence[Check], now: float) -> list[int]:
        out: list[int] = []
        for check in checks:
            if check.kind == "concurrency":
                slots = self._slots.get(check.bucket, {})
                out.append(sum(1 for expires_at in slots.values() if expires_at >= now))
                continue
            window = self._windows.get(check.bucket)
            if window is None:
                out.append(0)
                continue
            cutoff = now - check.window_seconds
            times, amounts = window.times, window.amounts
            out.append(
                sum(amounts[at] for at in range(window.head, len(times)) if times[at] > cutoff)
            )
        return out

    def _undo(self, reservation_id: str, held: _Held, refused: str) -> None:
        """Take back what a refused ``acquire`` recorded (each entry is the last of its
        deque) and drop the buckets it left empty, the ``refused`` one included."""
        for window, _ in held.entries.values():
            window.times.pop()
            window.total -= window.amounts.pop()
        self._free_slots(reservation_id, held.slots)
        for bucket in (*held.entries, refused):
            emptied = self._windows.get(bucket)
            if emptied is not None and not len(emptied):
                del self._windows[bucket]
        if not self._slots.get(refused, True):
            del self._slots[refused]

    async def settle(self, reservation_id: str, actual: Mapping[str, int], now: float) -> None:
        self.settle_now(reservation_id, actual)

    def settle_now(self, reservation_id: str, actual: Mapping[str, int]) -> None:
        held = self._held.pop(reservation_id, None)
        if held is None:
            return
        for bucket, amount in actual.items():
            found = self._live(bucket, held)
            if found is not None:
                window, at = found
                window.total += amount - window.amounts[at]
                window.amounts[at] = amount
        self._free_slots(reservation_id, held.slots)

    def _live(self, bucket: str, held: _Held) -> tuple[_Window, int] | None:
        """The window and position of the held entry in ``bucket``, if it still counts
        (not left the window, and the window not dropped and made anew since)."""
        made = held.entries.get(bucket)
        if made is None:
            return None
        window, seq = made
        if self._windows.get(bucket) is not window:
            return None
        at = seq - window.first  # ``window.position(seq)``, inlined: every settle
        return (window, at) if window.head <= at < len(window.times) else None

    async def release(self, reservation_id: str, now: float) -> None:
        self.release_now(reservation_id)

    def release_now(self, reservation_id: str) -> None:
        held = self._held.pop(reservation_id, None)
        if held is None:
            return
        for bucket in held.entries:
            found = self._live(bucket, held)
            if found is None:
                continue
            window, at = found
            if at == len(window.times) - 1:  # the usual case: a budget refused it just now
                window.times.pop()
                window.total -= window.amounts.pop()
            else:  # an older one stays in place, counting for nothing
                window.total -= window.amounts[at]
                window.amounts[at] = 0
                window.skip_empty()
            if not len(window):
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
            if not len(window):
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
