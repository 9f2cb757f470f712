"""Counters in one process's memory (``memory://``).

asyncio runs one coroutine at a time, and no method here awaits anything, so each
check-and-increment is atomic with respect to every other caller on the loop. Not
shared between processes or replicas: use ``redis://`` for that.

The hot path's three steps also come as plain methods (``reserve_now_seen``,
``settle_now``, ``release_now``) that the enforcer calls directly when these are its
counters: the ``Counters`` coroutines only wrap them, and an await per step is work for
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from spendgate.counters import BucketState, Counters, Generation, Hold, Refusal, Settlement


@dataclass(slots=True)
class _Bucket:
    spent: int = 0
    reserved: int = 0
    cap: int | None = None
    #: the ledger's uncounted spend already in ``spent`` (``catch_up``)
    uncounted: int = 0

    def give_back(self, amount: int) -> None:
        """Take up to ``amount`` out of ``reserved``, never below zero."""
        self.reserved -= max(0, min(amount, self.reserved))


#: what ``reserve`` reads for a bucket that does not exist yet (never written to)
_NOTHING = _Bucket()


@dataclass(slots=True)
class _Reservation:
    expires_at: float
    held: dict[str, int] = field(default_factory=dict)


class MemoryCounters(Counters):
    """The ``Counters`` protocol over two dicts: buckets and live reservations."""

    #: one process: its own admin changes reload its own snapshot, nothing to check
    shared = False

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._version = 0

    async def generation(self) -> Generation:
        return Generation("memory", self._version)

    async def bump(self) -> None:
        self._version += 1

    async def seed(
        self, bucket: str, spent: int, cap: int | None = None, uncounted: int = 0
    ) -> bool:
        if bucket in self._buckets:
            return False
        self._buckets[bucket] = _Bucket(spent=spent, cap=cap, uncounted=uncounted)
        return True

    async def exists(self, bucket: str) -> bool:
        return bucket in self._buckets

    async def reserve_seen(
        self,
        reservation_id: str,
        holds: Sequence[Hold],
        expires_at: float,
        generation: Generation | None = None,
    ) -> Refusal | tuple[int, ...]:
        return self.reserve_now_seen(reservation_id, holds, expires_at)

    def reserve_now_seen(
        self, reservation_id: str, holds: Sequence[Hold], expires_at: float
    ) -> Refusal | tuple[int, ...]:
        """``reserve_seen`` as a plain call (this process's memory: nothing to await)."""
        buckets = self._buckets
        pending: dict[str, int] = {}
        seen = []
        refused: list[Refusal] | None = None  # every hold that does not fit, in order
        for hold in holds:
            name = hold.bucket
            current = buckets.get(name) or _NOTHING
            cap = (current.cap or 0) if hold.use_stored_cap else hold.cap
            already = pending.get(name, 0)
            if cap is not None and current.spent + current.reserved + already + hold.amount > cap:
                refused = refused or []
                refused.append(Refusal(name, current.spent, current.reserved, cap))
                continue
            pending[name] = already + hold.amount
            seen.append(current.spent)
        if refused:
            return Refusal.of(refused)
        reservation = self._reservations.get(reservation_id)
        if reservation is None:  # the usual case: ``pending`` becomes what it holds
            self._reservations[reservation_id] = _Reservation(expires_at, pending)
        else:
            reservation.expires_at = expires_at
            for name, amount in pending.items():
                reservation.held[name] = reservation.held.get(name, 0) + amount
        for name, amount in pending.items():
            bucket = buckets.get(name)
            if bucket is None:
                bucket = buckets[name] = _Bucket()
            bucket.reserved += amount
        return tuple(seen)

    async def settle(
        self, reservation_id: str, settlements: Sequence[Settlement]
    ) -> list[tuple[int, int]]:
        return [
            (before, after) for before, after, _ in self.settle_now(reservation_id, settlements)
        ]

    def settle_now(
        self, reservation_id: str, settlements: Sequence[Settlement]
    ) -> list[tuple[int, int, int | None]]:
        """``settle``, with each bucket's cap as well (a wallet's top-ups), as the joint
        Redis settle returns them: the wallet warnings need it."""
        reservation = self._reservations.pop(reservation_id, None)
        held = reservation.held if reservation is not None else {}
        out: list[tuple[int, int, int | None]] = []
        # as the Redis settle: a bucket never seeded takes nothing, and then none does (the
        # ledger row, marked uncounted, brings the cost to each once)
        whole = True
        for settlement in settlements:  # not ``all(...)``: no generator on every settle
            if settlement.bucket not in self._buckets:
                whole = False
                break
        for settlement in settlements:
            bucket = self._buckets.get(settlement.bucket)
            if bucket is None or not whole:
                out.append((0, 0, None))
                continue
            back = min(settlement.reserved, held.get(settlement.bucket, 0))
            if back > 0:  # ``give_back``, inlined: every settle
                bucket.reserved -= min(back, bucket.reserved)
                held[settlement.bucket] -= back
            before = bucket.spent
            bucket.spent += settlement.actual
            out.append((before, bucket.spent, bucket.cap))
        self._give_back(held)
        return out

    async def release(self, reservation_id: str) -> None:
        self.release_now(reservation_id)

    def release_now(self, reservation_id: str) -> None:
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is not None:
            self._give_back(reservation.held)

    async def reap(self, now: float) -> int:
        expired = [rid for rid, r in self._reservations.items() if r.expires_at < now]
        for rid in expired:
            self._give_back(self._reservations.pop(rid).held)
        return len(expired)

    async def renew(self, reservation_ids: Sequence[str], expires_at: float) -> None:
        for rid in reservation_ids:
            reservation = self._reservations.get(rid)
            if reservation is not None:
                reservation.expires_at = expires_at

    async def add_cap(self, bucket: str, amount: int) -> None:
        target = self._buckets.get(bucket)
        if target is not None:
            target.cap = (target.cap or 0) + amount

    async def raise_to(
        self, bucket: str, field: str, floor: int, uncounted: int | None = None
    ) -> int | None:
        target = self._buckets.get(bucket)
        if target is None:
            return None
        before = target.spent if field == "spent" else (target.cap or 0)
        if before < floor:
            if field == "spent":
                target.spent = floor
                if uncounted is not None:
                    target.uncounted = max(target.uncounted, uncounted)
            else:
                target.cap = floor
        return before

    async def catch_up(self, bucket: str, uncounted: int) -> int | None:
        target = self._buckets.get(bucket)
        if target is None:
            return None
        added = max(0, uncounted - target.uncounted)
        target.spent += added
        target.uncounted += added
        return added

    async def state(self, bucket: str) -> BucketState | None:
        current = self._buckets.get(bucket)
        if current is None:
            return None
        return BucketState(current.spent, current.reserved, current.cap)

    async def aclose(self) -> None:
        return None

    def _give_back(self, held: dict[str, int]) -> None:
        for name, amount in held.items():
            bucket = self._buckets.get(name) if amount > 0 else None
            if bucket is not None:
                bucket.give_back(amount)
