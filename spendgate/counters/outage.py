"""Counters for one Redis outage in fail-open mode: this process's memory, with each cap
cut to this replica's share of the headroom.

While Redis is unreachable a fail-open replica admits calls against these instead
(``spendgate.guard.failover``). Each bucket is seeded from the ledger the first time it
is needed, exactly as a Redis bucket is, and that seed is remembered: a hold's cap
becomes ``budget_rules.fail_open_cap(cap, seed, replicas)``, so N replicas counting
alone admit, between them, no more than the headroom the ledger showed. What was spent
here past the seed (``outage_spend``) goes to Redis once it is back.

Every reserve, async or plain, goes through ``reserve_now_seen``, which cuts the caps;
everything else (the check-and-reserve itself, settle, release) is ``MemoryCounters``.
"""

from __future__ import annotations

from collections.abc import Sequence

from spendgate.core.budget_rules import fail_open_cap
from spendgate.counters import Hold, Refusal
from spendgate.counters.memory import MemoryCounters


class OutageCounters(MemoryCounters):
    def __init__(self, replicas: int) -> None:
        super().__init__()
        self._replicas = replicas
        #: each bucket's spend when this process began counting it alone (from the ledger)
        self.started: dict[str, int] = {}

    async def seed(
        self, bucket: str, spent: int, cap: int | None = None, uncounted: int = 0
    ) -> bool:
        fresh = await super().seed(bucket, spent, cap, uncounted)
        if fresh:
            self.started[bucket] = spent
        return fresh

    def _share(self, hold: Hold) -> tuple[Hold, int | None]:
        """The hold with this replica's share as its cap, and the real cap (None: none)."""
        cap = hold.cap
        if hold.use_stored_cap:
            state = self._buckets.get(hold.bucket)
            cap = (state.cap or 0) if state is not None else 0
        if cap is None:
            return hold, None
        share = fail_open_cap(cap, self.started.get(hold.bucket, 0), self._replicas)
        return Hold(hold.bucket, hold.amount, share), cap

    def reserve_now_seen(
        self, reservation_id: str, holds: Sequence[Hold], expires_at: float
    ) -> Refusal | tuple[int, ...]:
        shared = [self._share(h) for h in holds]
        refusal = super().reserve_now_seen(reservation_id, [h for h, _ in shared], expires_at)
        if not isinstance(refusal, Refusal):
            return refusal
        real = {h.bucket: cap for h, cap in shared}
        # each refusal names the budget's (or wallet's) own cap, not the share
        return Refusal.of(
            [
                Refusal(r.bucket, r.spent, r.reserved, real[r.bucket] or r.cap)
                for r in refusal.every()
            ]
        )

    def outage_spend(self) -> dict[str, int]:
        """Per bucket, what was settled here past its seed: the spend Redis has not seen."""
        out: dict[str, int] = {}
        for bucket, start in self.started.items():
            state = self._buckets.get(bucket)
            if state is not None and state.spent > start:
                out[bucket] = state.spent - start
        return out

    def reserved(self) -> int:
        """Nanos held by calls admitted here and still running."""
        return sum(b.reserved for b in self._buckets.values())
