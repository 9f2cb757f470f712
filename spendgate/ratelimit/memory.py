"""Rate-limit logs in one process's memory (``memory://``).

asyncio runs one coroutine at a time, and no method here awaits anything, so each
check-and-record is atomic with respect to every other caller on the loop. Not shared
between processes or replicas: use ``redis://`` for that.

Each window bucket keeps its entries, oldest first, in two flat arrays with a running
total; entries leave from the front as ``now`` passes them (on every check of the bucket).
Flat arrays because a busy key keeps one entry per call per window alive for a minute: as
Python objects, hundreds of thousands of them made every full garbage collection walk
them all (tens of ms of pause, +40 % CPU per call at 4,000 calls/s); as array items the
collector never sees them. Times are whole microseconds (the clock's resolution:
``datetime``; ``_us``), each stored as its gap from the entry before, and amounts as
they are: 4-byte unsigned ints while they fit (gaps under ~71 min, amounts under 2**32),
widened to 8-byte ints the first time one does not. So an entry takes 8 bytes, and the
window stays an exact log: every call's own stamp, no rounding into slots. The entries
that have left are cut off the front once they are a quarter of the array, so a window
holds at most 4/3 of its live entries (a cut moves at most three live entries per dead
one: amortised O(1) a call). An entry is stamped ``max(now, newest entry)`` so the
arrays stay sorted even if the clock steps back. Concurrency buckets map reservation id
to ``expires_at``; slots past it stop counting, dropped when they would make the
difference (a check stays O(1), not O(calls in flight)). ``reap`` sweeps every bucket
and drops the empty ones, so memory is bounded by the requests of the last window plus
the calls in flight.

The hot path's steps also come as plain methods (``acquire_now``, ``settle_now``,
``release_now``) that ``RateGate`` calls directly when this is its limiter: the
``RateLimiter`` coroutines only wrap them.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spendgate.ratelimit import Check, CheckResult, Denial, Granted, validate

#: entries that have left are cut off the front once there are this many and they are a
#: quarter of the array (fewer are not worth a cut)
_COMPACT_AT = 1024

#: microseconds in a second: window times are whole microseconds
_US = 1_000_000


def _us(seconds: float) -> int:
    """``seconds`` (a time stamp or a window's length) in whole microseconds: exact for the
    clock's stamps (``datetime``, microseconds) until 2112, where a stamp of ~1.8e9 s
    times 1e6 is within 0.25 µs of its integer."""
    return round(seconds * _US)


def _narrow() -> array[int]:
    return array("I")


@dataclass(slots=True, eq=False)
class _Window:
    """A sliding-window log. Entry ``seq`` (counted from this window's creation) sits at
    ``seq - first`` in the arrays; those before ``head`` have left the window. Entry
    ``i``'s stamp is ``gaps[i]`` µs after entry ``i - 1``'s; ``oldest`` is entry
    ``head``'s stamp and ``newest`` the last entry's (both µs)."""

    window: int  # µs
    gaps: array[int] = field(default_factory=_narrow)
    amounts: array[int] = field(default_factory=_narrow)
    head: int = 0
    first: int = 0
    total: int = 0
    oldest: int = 0
    newest: int = 0

    def __len__(self) -> int:
        return len(self.gaps) - self.head

    def prune(self, now: int) -> None:
        """Drop the entries that have left the window at ``now`` (µs)."""
        cutoff = now - self.window
        gaps, amounts, head, end = self.gaps, self.amounts, self.head, len(self.gaps)
        total, stamp = self.total, self.oldest
        while head < end and stamp <= cutoff:
            total -= amounts[head]
            head += 1
            if head < end:
                stamp += gaps[head]
        self.total, self.head, self.oldest = total, head, stamp
        if head >= _COMPACT_AT and head * 4 >= end:
            del gaps[:head]
            del amounts[:head]
            self.first += head
            self.head = 0

    def skip_empty(self) -> None:
        """Let released (zeroed) entries at the front leave, so the oldest entry, which
        tells when capacity returns, is one that counts."""
        gaps, amounts, head, end = self.gaps, self.amounts, self.head, len(self.gaps)
        while head < end and amounts[head] == 0:
            head += 1
            if head < end:
                self.oldest += gaps[head]
        self.head = head

    def add(self, stamp: int, amount: int) -> int:
        """Append an entry at ``stamp`` (µs; at the newest entry's if that is later, so
        the log stays sorted); its ``seq``."""
        if self.head < len(self.gaps):
            gap = stamp - self.newest
            if gap < 0:
                gap = 0
        else:  # empty: the entry is the oldest; the entries before it have all left
            gap = 0
            self.oldest = self.newest = stamp
        try:
            self.gaps.append(gap)
        except OverflowError:
            self.gaps = array("q", self.gaps)
            self.gaps.append(gap)
        try:
            self.amounts.append(amount)
        except OverflowError:
            self.amounts = array("q", self.amounts)
            self.amounts.append(amount)
        self.newest += gap
        self.total += amount
        return self.first + len(self.gaps) - 1

    def set(self, at: int, amount: int) -> None:
        """Entry at position ``at`` now counts ``amount``."""
        self.total += amount - self.amounts[at]
        try:
            self.amounts[at] = amount
        except OverflowError:
            self.amounts = array("q", self.amounts)
            self.amounts[at] = amount

    def pop(self) -> None:
        """Take back the last entry."""
        self.newest -= self.gaps.pop()
        self.total -= self.amounts.pop()

    def position(self, seq: int) -> int | None:
        """Where entry ``seq`` is, or None once it has left the window."""
        at = seq - self.first
        return at if self.head <= at < len(self.gaps) else None

    def used_after(self, cutoff: int) -> int:
        """What the entries stamped after ``cutoff`` (µs) count, without pruning."""
        used, stamp, gaps, amounts = self.total, self.oldest, self.gaps, self.amounts
        for at in range(self.head, len(gaps)):
            if at > self.head:
                stamp += gaps[at]
            if stamp > cutoff:
                break
            used -= amounts[at]
        return used

    def fit_time(self, need: int, cutoff: int) -> float | None:
        """Seconds after ``cutoff``'s moment (µs) at which ``need`` has left the window."""
        freed, stamp, gaps, amounts = 0, self.oldest, self.gaps, self.amounts
        for at in range(self.head, len(gaps)):
            if at > self.head:
                stamp += gaps[at]
            freed += amounts[at]
            if freed >= need:
                return (stamp - cutoff) / _US
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
        stamp = round(now * _US)  # ``_us(now)``, inlined here and below: every call
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
            span = round(window_seconds * _US)
            cutoff = stamp - span
            if window is None:
                window = self._windows[bucket] = _Window(span)
            else:
                window.window = span
                # ``len(window)`` inlined: every call
                if window.head < len(window.gaps) and window.oldest <= cutoff:
                    window.prune(stamp)
            used = window.total
            if used + amount > limit:
                retry = None
                if amount <= limit:
                    retry = window.fit_time(used + amount - limit, cutoff)
                self._undo(reservation_id, held, bucket)
                return Denial(index, checks[index], used, retry)
            held.entries[bucket] = (window, window.add(stamp, amount))
            reset = (window.oldest - cutoff) / _US
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
            out.append(window.used_after(_us(now) - _us(check.window_seconds)))
        return out

    def _undo(self, reservation_id: str, held: _Held, refused: str) -> None:
        """Take back what a refused ``acquire`` recorded (each entry is the last of its
        deque) and drop the buckets it left empty, the ``refused`` one included."""
        for window, _ in held.entries.values():
            window.pop()
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
                window.set(at, amount)
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
        return (window, at) if window.head <= at < len(window.gaps) else None

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
            if at == len(window.gaps) - 1:  # the usual case: a budget refused it just now
                window.pop()
            else:  # an older one stays in place, counting for nothing
                window.set(at, 0)
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
            window.prune(_us(now))
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
